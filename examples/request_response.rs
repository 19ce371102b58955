//! MQTT 5.0 request/response: a responder answers requests on the Response
//! Topic each request names, echoing its Correlation Data, and a requester
//! matches answers to questions by that data.
//!
//! ```sh
//! cargo run -p petrel-examples --example request_response -- 127.0.0.1 1883
//! ```

use bytes::Bytes;
use petrel_client::{connect, ConnectOptions, Message, Properties, QoS, TopicName};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(1883);

    // The responder: doubles the number it is sent.
    let (responder, mut requests) =
        connect(ConnectOptions::new(host.clone(), port, "example-responder")).await?;
    responder
        .subscribe("examples/double", QoS::AtLeastOnce)
        .await?;
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let (Some(reply_to), correlation) = (
                req.properties.response_topic(),
                req.properties.correlation_data(),
            ) else {
                continue;
            };
            let n: i64 = String::from_utf8_lossy(&req.payload).parse().unwrap_or(0);
            let mut answer =
                Message::new(reply_to, Bytes::from((2 * n).to_string()), QoS::AtLeastOnce);
            answer.properties.set_correlation_data(correlation);
            // Publishing from the loop that reads messages is safe.
            let _ = responder.publish(answer).await;
        }
    });

    // The requester.
    let (requester, mut answers) =
        connect(ConnectOptions::new(host, port, "example-requester")).await?;
    let reply_to = "examples/answers/example-requester";
    requester.subscribe(reply_to, QoS::AtLeastOnce).await?;
    for (i, n) in [7, 21, 100].into_iter().enumerate() {
        let mut props = Properties::new();
        props.set_response_topic(Some(TopicName::try_from(reply_to)?));
        props.set_correlation_data(Some(Bytes::from(format!("req-{i}"))));
        let mut request = Message::new(
            TopicName::from_static("examples/double"),
            Bytes::from(n.to_string()),
            QoS::AtLeastOnce,
        );
        request.properties = props;
        requester.publish(request).await?;
        let answer = answers.recv().await.ok_or("closed")?;
        let correlation = answer.properties.correlation_data().unwrap_or_default();
        println!(
            "{n} doubled is {} (correlation {})",
            String::from_utf8_lossy(&answer.payload),
            String::from_utf8_lossy(&correlation)
        );
    }
    requester.disconnect().await?;
    Ok(())
}
