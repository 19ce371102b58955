//! Publish a few messages at QoS 1 and report each acknowledgement.
//!
//! ```sh
//! cargo run -p petrel -- broker &            # or any MQTT broker on 1883
//! cargo run -p petrel-examples --example publish -- 127.0.0.1 1883
//! ```

use std::time::Duration;

use petrel_client::{connect, ConnectOptions, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".into());
    let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(1883);
    let (client, _messages) = connect(ConnectOptions::new(host, port, "example-publisher")).await?;
    for i in 0..5 {
        let ack = client
            .publish_to("examples/counter", i.to_string(), QoS::AtLeastOnce)
            .await?;
        println!("published {i}: {}", ack.reason_code);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.disconnect().await?;
    Ok(())
}
