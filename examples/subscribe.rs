//! Subscribe to a filter and print what arrives, until Ctrl-C. The
//! subscription survives reconnects: the client restores it if the broker
//! kept no session.
//!
//! ```sh
//! cargo run -p petrel-examples --example subscribe -- 127.0.0.1 1883 'examples/#'
//! ```

use petrel_client::{connect, ConnectOptions, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".into());
    let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(1883);
    let filter = args.next().unwrap_or_else(|| "examples/#".into());
    let mut options = ConnectOptions::new(host, port, "example-subscriber");
    // Keep the session for an hour, so messages published while we are
    // away are queued for us.
    options.clean_start = false;
    options.session_expiry = 3600;
    let (client, mut messages) = connect(options).await?;
    let ack = client.subscribe(&filter, QoS::AtLeastOnce).await?;
    println!("subscribed to {filter}: {:?}", ack.reason_codes);
    loop {
        tokio::select! {
            m = messages.recv() => match m {
                Some(m) => println!("{} {}", m.topic.as_str(), String::from_utf8_lossy(&m.payload)),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.disconnect().await?;
    Ok(())
}
