//! A trace continued across a queue through message headers.

use crate::common;

use std::collections::HashMap;

use agent::{Destination, FutureExt, SpanKind};
use testkit::TestCollector;

use common::{spans, start_agent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_message_headers_continues_the_trace() {
    let collector = TestCollector::start("agent_messaging").await;
    let (producer_guard, _l1) = start_agent("orders-producer", &collector);
    let (consumer_guard, _l2) = start_agent("orders-consumer", &collector);
    let producer = producer_guard.agent().clone();
    let consumer = consumer_guard.agent().clone();
    let orders = Destination {
        system: "rabbitmq",
        name: "orders",
    };

    // The "broker": a channel of (headers, body) messages between two tasks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(HashMap<String, String>, String)>(8);
    let consumer_task = tokio::spawn(async move {
        let (headers, body) = rx.recv().await.expect("a message");
        let span = consumer.consumer_span(orders, &headers);
        let handled = async {
            // Work inside the consumer span is its child.
            let child = consumer.start_span("store order", SpanKind::Internal);
            child.end();
            body.len()
        }
        .with_context(span.context().clone())
        .await;
        span.end();
        handled
    });

    let root = producer.start_span("place order", SpanKind::Internal);
    let trace_id = root.trace_id().to_hex();
    let root_id = root.span_id().to_hex();
    {
        let _in_root = root.enter();
        let mut headers = HashMap::new();
        let publish = producer.producer_span(orders, &mut headers);
        assert!(headers.contains_key("traceparent"), "{headers:?}");
        tx.send((headers, "order-1".to_string()))
            .await
            .expect("send");
        publish.end();
    }
    root.end();
    assert_eq!(consumer_task.await.expect("consumer"), 7);
    producer_guard
        .shutdown_async()
        .await
        .expect("producer flushed");
    consumer_guard
        .shutdown_async()
        .await
        .expect("consumer flushed");

    let rows = spans(&collector, &format!("TraceId = '{trace_id}'"), 4).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let kind = |k: &str| {
        rows.iter()
            .find(|r| r.span_kind == k)
            .unwrap_or_else(|| panic!("{k} span in {rows:?}"))
    };
    let publish = kind("Producer");
    let process = kind("Consumer");
    let store = rows
        .iter()
        .find(|r| r.span_name == "store order")
        .expect("child of the consumer");
    assert_eq!(publish.parent_span_id, root_id);
    assert_eq!(publish.span_name, "publish orders");
    assert_eq!(publish.service_name, "orders-producer");
    assert_eq!(publish.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(publish.attr("messaging.destination.name"), Some("orders"));
    assert_eq!(publish.attr("messaging.operation.type"), Some("send"));
    assert_eq!(process.parent_span_id, publish.span_id);
    assert_eq!(process.span_name, "process orders");
    assert_eq!(process.service_name, "orders-consumer");
    assert_eq!(process.attr("messaging.operation.type"), Some("process"));
    assert_eq!(store.parent_span_id, process.span_id);
    collector.stop().await;
}

/// The same propagation through lapin's AMQP header table (the type a RabbitMQ
/// message carries), without a broker.
#[cfg(feature = "lapin")]
#[test]
fn amqp_field_table_carries_the_context() {
    use agent::{Extractor, Propagators};
    use lapin::types::FieldTable;

    // Recording (a disabled agent only passes a parent through), exporting nothing.
    let guard = agent::AgentBuilder::from_config(agent::Config::default())
        .json_logs(false)
        .configure(|c| {
            for signal in agent::Signal::ALL {
                c.export_mut(signal).enabled = false;
            }
        })
        .start()
        .expect("agent");
    // With a parent: a disabled agent passes it through unchanged.
    let parent = agent::Context {
        span: Some(agent::SpanContext {
            trace_id: agent::TraceId([7; 16]),
            span_id: agent::SpanId([8; 8]),
            flags: 1,
            remote: true,
        }),
        ..agent::Context::default()
    };
    let span = guard
        .agent()
        .start_span_with_parent("x", SpanKind::Producer, Some(&parent));
    let mut table = FieldTable::default();
    Propagators::default().inject(span.context(), &mut table);
    assert!(table.get("traceparent").is_some());
    let extracted = Propagators::default().extract(&table).expect("context");
    assert_eq!(extracted.trace_id(), Some(span.trace_id()));
    assert_eq!(extracted.span_id(), Some(span.span_id()));
}
