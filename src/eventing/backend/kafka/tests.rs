//! Fast checks of the Kafka backend against librdkafka's in-process
//! MockCluster (a real Kafka protocol peer, without topic creation by
//! AdminClient). The real-broker suite is tests/kafka.rs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::config::{KafkaAuth, KafkaConfig};
use super::*;
use crate::cloudevent::test_event;

fn config(cluster: &MockCluster<'_, DefaultProducerContext>, topic: &str) -> KafkaConfig {
    cluster.create_topic(topic, 3, 1).expect("topic");
    KafkaConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        topic: topic.to_owned(),
        partitions: 3,
        replication_factor: 1,
        external_topic: true,
        keep_topic: true,
        auth: KafkaAuth::default(),
        member: None,
        channel: false,
        retention_ms: None,
    }
}

fn spec(name: &str, filter: Filter) -> SubscriptionSpec {
    SubscriptionSpec {
        trigger: ObjectKey::new("default", name),
        filter: Arc::new(filter),
        max_in_flight: 100,
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
}

fn keyed(id: &str, ty: &str, key: &str) -> Event {
    let mut event = test_event(id, ty, Some(Bytes::from(format!("{{\"id\":\"{id}\"}}"))));
    event.set_attribute("partitionkey", key);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_reach_a_filtered_subscription_in_partition_order() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let backend = start(&config(&cluster, "t1")).await.expect("starts");
    let mut sub = backend
        .subscribe(spec(
            "orders",
            Filter::Exact {
                attribute: "type".into(),
                value: "order".into(),
            },
        ))
        .await
        .expect("subscribes");
    let events: Vec<Event> = (0..20)
        .map(|n| {
            keyed(
                &n.to_string(),
                if n % 2 == 0 { "order" } else { "other" },
                "k",
            )
        })
        .collect();
    backend.append(events).await.expect("appended");
    let mut ids = Vec::new();
    let mut lanes = std::collections::HashSet::new();
    for _ in 0..10 {
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.event.ty(), "order");
        ids.push(delivery.event.id().to_owned());
        lanes.insert(delivery.lane);
        delivery.ack().await;
    }
    let expected: Vec<String> = (0..20).step_by(2).map(|n| n.to_string()).collect();
    assert_eq!(ids, expected, "one key: one partition, in order");
    assert_eq!(lanes.len(), 1);
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribe_redelivers_from_the_first_unacknowledged_event() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let backend = start(&config(&cluster, "t2")).await.expect("starts");
    let mut sub = backend
        .subscribe(spec("t", Filter::Everything))
        .await
        .expect("subscribes");
    let events: Vec<Event> = (0..5).map(|n| keyed(&n.to_string(), "t", "k")).collect();
    backend.append(events).await.expect("appended");
    let mut deliveries = Vec::new();
    for _ in 0..5 {
        deliveries.push(next(&mut sub).await);
    }
    // Acks 0, 1, 3, 4 but not 2: only 0..2 may be committed.
    let third = deliveries.remove(2);
    for delivery in deliveries {
        delivery.ack().await;
    }
    drop(third);
    tokio::time::sleep(consumer::COMMIT_INTERVAL * 3).await;
    drop(sub);
    let mut again = backend
        .subscribe(spec("t", Filter::Everything))
        .await
        .expect("subscribes again");
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(next(&mut again).await.event.id().to_owned());
        }
        ids
    };
    assert_eq!(
        ids,
        ["2", "3", "4"],
        "from the first unacknowledged, none skipped"
    );
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_trigger_starts_at_the_newest_event() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let backend = start(&config(&cluster, "t3")).await.expect("starts");
    backend
        .append(vec![keyed("old", "t", "k")])
        .await
        .expect("appended");
    let mut sub = backend
        .subscribe(spec("late", Filter::Everything))
        .await
        .expect("subscribes");
    backend
        .append(vec![keyed("new", "t", "k")])
        .await
        .expect("appended");
    assert_eq!(next(&mut sub).await.event.id(), "new");
    backend.shutdown().await;
}

#[test]
fn the_static_member_id_is_the_replica_name_as_kafka_takes_it() {
    use super::static_member;
    assert_eq!(
        static_member("pilotlight-7d9f-x2"),
        Some("pilotlight-7d9f-x2".into())
    );
    assert_eq!(static_member(" a b/c:d "), Some("a-b-c-d".into()));
    assert_eq!(static_member(&"x".repeat(300)).map(|m| m.len()), Some(249));
    assert_eq!(static_member("  "), None);
}
