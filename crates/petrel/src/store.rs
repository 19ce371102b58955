//! `petrel store`: look inside a data directory, and copy what is readable
//! out of a damaged one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use petrel_broker::core::store::check_entry;
use petrel_broker::{BrokerConfig, DiskStore, Durability, Op, Store, Table};

#[derive(clap::Args)]
pub(crate) struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Read every entry of a data directory's store and report what is
    /// there and what can't be read (exit status 1 if anything can't). The
    /// broker must not be running on it.
    Check(Where),
    /// Copy every readable entry into a new data directory (which then
    /// replaces the damaged one as `data_dir`); what can't be read is
    /// listed and left behind.
    Salvage {
        #[command(flatten)]
        from: Where,
        /// The new data directory (must not hold a store yet).
        #[arg(long = "into", value_name = "DIR")]
        into: PathBuf,
    },
}

#[derive(clap::Args)]
struct Where {
    /// The data directory.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Or the broker's configuration file, whose `data_dir` it is.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Where {
    fn dir(&self) -> Result<PathBuf, String> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        let Some(path) = &self.config else {
            return Err("say which store: --data-dir DIR or -c CONFIG".into());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config = BrokerConfig::from_toml(&text)
            .map_err(|e| format!("invalid configuration in {}: {e}", path.display()))?;
        config
            .data_dir
            .ok_or_else(|| format!("{} sets no data_dir", path.display()))
    }
}

/// What reading a store found.
struct Found {
    good: Vec<(Table, Vec<u8>, Vec<u8>)>,
    bad: Vec<(Table, Vec<u8>, String)>,
    /// Parts of the journal that can't be read (file, offset, why).
    damage: Vec<String>,
    disk_bytes: u64,
}

fn read_all(dir: &Path) -> Result<Found, String> {
    if !dir.join("FORMAT").exists() {
        return Err(format!("{} holds no Petrel store", dir.display()));
    }
    let seen = DiskStore::inspect(dir).map_err(|e| e.to_string())?;
    let mut found = Found {
        good: Vec::new(),
        bad: Vec::new(),
        damage: seen.damage,
        disk_bytes: seen.disk_bytes,
    };
    for ((table, key), value) in seen.entries {
        match check_entry(table, &key, &value) {
            Ok(()) => found.good.push((table, key, value)),
            Err(e) => found.bad.push((table, key, e.to_string())),
        }
    }
    Ok(found)
}

fn report(dir: &Path, found: &Found) {
    println!("store: {}", dir.display());
    println!("  on disk: {} bytes", found.disk_bytes);
    for table in Table::ALL {
        let good = found.good.iter().filter(|(t, ..)| *t == table).count();
        let bad = found.bad.iter().filter(|(t, ..)| *t == table).count();
        println!("  {}: {good} readable, {bad} not", table.name());
    }
    for (table, key, why) in &found.bad {
        println!(
            "  unreadable {} {:?}: {why}",
            table.name(),
            String::from_utf8_lossy(key)
        );
    }
    for d in &found.damage {
        println!("  damaged journal (the rest of that file is skipped): {d}");
    }
}

pub(crate) fn run(args: StoreArgs) -> ExitCode {
    let result = match args.command {
        StoreCommand::Check(w) => check(&w),
        StoreCommand::Salvage { from, into } => salvage(&from, &into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petrel store: {e}");
            ExitCode::from(2)
        }
    }
}

fn check(w: &Where) -> Result<ExitCode, String> {
    let dir = w.dir()?;
    let found = read_all(&dir)?;
    report(&dir, &found);
    if found.bad.is_empty() && found.damage.is_empty() {
        println!("  all readable");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "  `petrel store salvage --data-dir {} --into NEW_DIR` copies the readable entries into a new store",
            dir.display()
        );
        Ok(ExitCode::from(1))
    }
}

fn salvage(from: &Where, into: &Path) -> Result<ExitCode, String> {
    let dir = from.dir()?;
    if into.join("FORMAT").exists() {
        return Err(format!("{} holds a store already", into.display()));
    }
    let found = read_all(&dir)?;
    report(&dir, &found);
    let target =
        DiskStore::open(into, Durability::Process, Duration::ZERO).map_err(|e| e.to_string())?;
    let copied = found.good.len();
    for chunk in found.good.chunks(1024) {
        let ops = chunk
            .iter()
            .map(|(table, key, value)| Op::Put {
                table: *table,
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        target.commit(ops).map_err(|e| e.to_string())?;
    }
    target.sync().map_err(|e| e.to_string())?;
    println!(
        "copied {copied} entries into {} ({} left behind); point data_dir there",
        into.display(),
        found.bad.len()
    );
    if !found.damage.is_empty() {
        println!(
            "entries in the damaged part of the journal are lost, and entries it deleted may be back"
        );
    }
    Ok(ExitCode::SUCCESS)
}
