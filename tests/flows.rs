//! Channels, Subscriptions, Sequences and Parallels over real HTTP, with
//! real subscribers: every event of a channel to every subscription,
//! replies on to `reply`, steps in order, a failing step's events to its
//! dead-letter sink, branches behind their filters.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::{Answer, Received, Subscriber, TestServer, broker, request, send, trigger};

const WAIT: Duration = Duration::from_secs(15);

fn channel(name: &str) -> String {
    format!(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: {name}\n"
    )
}

fn subscription(name: &str, channel: &str, spec: &str) -> String {
    format!(
        "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: {name}\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: {channel}\n{spec}"
    )
}

/// Replies to each event with the same id and its data with `suffix`
/// appended: a step that leaves its mark.
fn appending(suffix: &'static str) -> impl Fn(&Received, usize) -> Answer + Send + Sync {
    move |received, _| {
        let Some(event) = &received.event else {
            return (StatusCode::BAD_REQUEST, vec![], Bytes::new());
        };
        let data = event.data().map(|d| d.to_vec()).unwrap_or_default();
        let mut data = String::from_utf8_lossy(&data).into_owned();
        data.push_str(suffix);
        (
            StatusCode::OK,
            vec![
                ("ce-specversion", "1.0".into()),
                ("ce-id", event.id().to_owned()),
                ("ce-source", "/step".into()),
                ("ce-type", event.ty().to_owned()),
                ("content-type", "text/plain".into()),
            ],
            Bytes::from(data),
        )
    }
}

/// Posts a binary-mode event with text data.
async fn post(url: &str, id: &str, ty: &str, data: &str) -> StatusCode {
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/test"),
        ("ce-type", ty),
        ("content-type", "text/plain"),
    ];
    request(Method::POST, url, &headers, data.to_owned())
        .await
        .status
}

fn data(received: &[pilotlight::cloudevent::Event]) -> Vec<String> {
    let mut all: Vec<String> = received
        .iter()
        .map(|e| String::from_utf8_lossy(e.data().map(|d| &d[..]).unwrap_or_default()).into())
        .collect();
    all.sort();
    all
}

/// The admin API's view of one object.
async fn view(s: &TestServer, collection: &str, name: &str) -> serde_json::Value {
    let items = support::admin_list(s.server.admin, collection).await;
    items
        .into_iter()
        .find(|i| i["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{collection}/{name} is not listed"))
}

#[tokio::test]
async fn every_subscription_of_a_channel_gets_every_event_and_replies_go_to_reply() {
    let replier = Subscriber::start(appending("+r"), Duration::ZERO).await;
    let replies = Subscriber::accepting().await;
    let plain = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("channel.yaml", &channel("orders")),
        (
            "with-reply.yaml",
            &subscription(
                "with-reply",
                "orders",
                &format!(
                    "  subscriber:\n    uri: {}\n  reply:\n    uri: {}\n",
                    replier.url("/"),
                    replies.url("/replies")
                ),
            ),
        ),
        (
            "plain.yaml",
            &subscription(
                "plain",
                "orders",
                &format!("  subscriber:\n    uri: {}\n", plain.url("/")),
            ),
        ),
    ])
    .await;
    let address = s
        .wait_ready_condition("channels", "orders", "True", &[], WAIT)
        .await;
    assert_eq!(address["status"], "True");
    let orders = view(&s, "channels", "orders").await;
    let url = orders["status"]["address"]["url"]
        .as_str()
        .expect("an address")
        .to_owned();
    assert!(url.ends_with("/default/orders-kn-channel"), "{url}");
    for id in ["1", "2"] {
        assert_eq!(post(&url, id, "order", id).await, StatusCode::ACCEPTED);
    }
    assert_eq!(data(&plain.wait_for(2, WAIT).await), ["1", "2"]);
    assert_eq!(data(&replier.wait_for(2, WAIT).await), ["1", "2"]);
    assert_eq!(data(&replies.wait_for(2, WAIT).await), ["1+r", "2+r"]);
    // The channel lists its subscribers, and each subscription what it
    // resolved.
    s.wait_ready_condition("subscriptions", "with-reply", "True", &[], WAIT)
        .await;
    let orders = view(&s, "channels", "orders").await;
    let subscribers = orders["status"]["subscribers"].as_array().expect("listed");
    let names: Vec<&str> = subscribers
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["plain", "with-reply"]);
    let sub = view(&s, "subscriptions", "with-reply").await;
    let physical = &sub["status"]["physicalSubscription"];
    assert_eq!(physical["replyUri"], replies.url("/replies"));
    assert_eq!(physical["subscriberUri"], replier.url("/"));
}

#[tokio::test]
async fn a_subscription_to_a_missing_channel_says_so_and_starts_when_it_comes() {
    let plain = Subscriber::accepting().await;
    let s = TestServer::start(&[(
        "sub.yaml",
        &subscription(
            "early",
            "later",
            &format!("  subscriber:\n    uri: {}\n", plain.url("/")),
        ),
    )])
    .await;
    s.wait_ready_condition(
        "subscriptions",
        "early",
        "False",
        &[
            "ChannelDoesNotExist",
            "InMemoryChannel default/later does not exist",
        ],
        WAIT,
    )
    .await;
    std::fs::write(s.manifests.join("channel.yaml"), channel("later")).expect("write");
    s.reapply().await;
    s.wait_ready_condition("subscriptions", "early", "True", &[], WAIT)
        .await;
    let url = s.broker_url("default", "later-kn-channel");
    assert_eq!(send(&url, "1", "t").await.status, StatusCode::ACCEPTED);
    plain.wait_for(1, WAIT).await;
}

#[tokio::test]
async fn a_sequence_runs_its_steps_in_order_and_its_reply_enters_a_broker() {
    let first = Subscriber::start(appending("-1"), Duration::ZERO).await;
    let second = Subscriber::start(appending("-2"), Duration::ZERO).await;
    let end = Subscriber::accepting().await;
    let sequence = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n  steps:\n    - uri: {}\n    - uri: {}\n  reply:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: default\n",
        first.url("/"),
        second.url("/")
    );
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("end.yaml", &trigger("end", "default", &end.url("/"), "")),
        ("sequence.yaml", &sequence),
    ])
    .await;
    s.wait_ready_condition("sequences", "seq", "True", &[], WAIT)
        .await;
    let seq = view(&s, "sequences", "seq").await;
    let status = &seq["status"];
    assert_eq!(status["channelStatuses"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        status["subscriptionStatuses"][1]["subscription"]["name"],
        "seq-kn-sequence-1"
    );
    let url = status["address"]["url"].as_str().expect("an address");
    assert!(
        url.ends_with("/default/seq-kn-sequence-0-kn-channel"),
        "{url}"
    );
    assert_eq!(post(url, "a", "work", "x").await, StatusCode::ACCEPTED);
    assert_eq!(data(&end.wait_for(1, WAIT).await), ["x-1-2"]);
    assert_eq!(data(&first.events()), ["x"]);
    assert_eq!(data(&second.events()), ["x-1"]);
    // The parts show in get, owned by the sequence.
    let part = view(&s, "subscriptions", "seq-kn-sequence-0").await;
    assert_eq!(part["metadata"]["ownerReferences"][0]["kind"], "Sequence");
    assert_eq!(part["metadata"]["ownerReferences"][0]["name"], "seq");
}

#[tokio::test]
async fn a_failing_step_sends_its_events_to_the_steps_dead_letter_sink() {
    let failing = Subscriber::failing().await;
    let dead = Subscriber::accepting().await;
    let after = Subscriber::accepting().await;
    let sequence = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n  steps:\n    - uri: {}\n      delivery:\n        retry: 1\n        backoffDelay: PT0.01S\n        deadLetterSink:\n          uri: {}\n    - uri: {}\n",
        failing.url("/"),
        dead.url("/dead"),
        after.url("/")
    );
    let s = TestServer::start(&[("sequence.yaml", &sequence)]).await;
    s.wait_ready_condition("sequences", "seq", "True", &[], WAIT)
        .await;
    let url = s.broker_url("default", "seq-kn-sequence-0-kn-channel");
    assert_eq!(post(&url, "a", "work", "x").await, StatusCode::ACCEPTED);
    let dead_letters = dead.wait_for(1, WAIT).await;
    assert_eq!(dead_letters[0].id(), "a");
    assert!(
        dead_letters[0].attribute("knativeerrordest").is_some(),
        "{:?}",
        dead_letters[0]
    );
    // Two tries (retry: 1), and nothing reached the next step.
    assert_eq!(failing.count(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(after.count(), 0);
}

#[tokio::test]
async fn a_parallel_sends_each_event_to_the_branches_whose_filter_keeps_it() {
    // The filter keeps an event by replying with it, drops it by replying
    // with nothing (Knative's filter contract).
    let evens = Subscriber::start(
        |received: &Received, _| {
            let Some(event) = &received.event else {
                return (StatusCode::BAD_REQUEST, vec![], Bytes::new());
            };
            if event.ty() != "even" {
                return (StatusCode::OK, vec![], Bytes::new());
            }
            appending("")(received, 0)
        },
        Duration::ZERO,
    )
    .await;
    let even_branch = Subscriber::start(appending("/even"), Duration::ZERO).await;
    let every_branch = Subscriber::start(appending("/all"), Duration::ZERO).await;
    let end = Subscriber::accepting().await;
    let parallel = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata:\n  name: par\nspec:\n  branches:\n    - filter:\n        uri: {}\n      subscriber:\n        uri: {}\n    - subscriber:\n        uri: {}\n  reply:\n    uri: {}\n",
        evens.url("/"),
        even_branch.url("/"),
        every_branch.url("/"),
        end.url("/")
    );
    let s = TestServer::start(&[("parallel.yaml", &parallel)]).await;
    s.wait_ready_condition("parallels", "par", "True", &[], WAIT)
        .await;
    let par = view(&s, "parallels", "par").await;
    let url = par["status"]["address"]["url"]
        .as_str()
        .expect("an address");
    assert!(
        url.ends_with("/default/par-kn-parallel-kn-channel"),
        "{url}"
    );
    assert_eq!(
        par["status"]["branchStatuses"][0]["filterSubscriptionStatus"]["subscription"]["name"],
        "par-kn-parallel-filter-0"
    );
    assert_eq!(post(url, "1", "odd", "1").await, StatusCode::ACCEPTED);
    assert_eq!(post(url, "2", "even", "2").await, StatusCode::ACCEPTED);
    assert_eq!(
        data(&end.wait_for(3, WAIT).await),
        ["1/all", "2/all", "2/even"]
    );
    assert_eq!(data(&even_branch.events()), ["2"]);
    assert_eq!(evens.count(), 2);
}

#[tokio::test]
async fn a_flow_with_a_missing_step_is_not_ready_and_names_it() {
    let sequence = "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n  steps:\n    - ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: nowhere\n";
    let s = TestServer::start(&[("sequence.yaml", sequence)]).await;
    s.wait_ready_condition(
        "sequences",
        "seq",
        "False",
        &[
            "SubscriberResolveFailed",
            "Subscription seq-kn-sequence-0",
            "service default/nowhere does not exist",
        ],
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn two_channel_kinds_of_one_name_share_an_address_so_the_second_is_refused() {
    let plain = Subscriber::accepting().await;
    let generic =
        "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: orders\n";
    let to_generic = "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: to-generic\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: Channel\n    name: orders\n  subscriber:\n    uri: http://127.0.0.1:9/\n";
    let s = TestServer::start(&[
        ("a.yaml", &channel("orders")),
        ("b.yaml", generic),
        (
            "c.yaml",
            &subscription(
                "to-memory",
                "orders",
                &format!("  subscriber:\n    uri: {}\n", plain.url("/")),
            ),
        ),
        ("d.yaml", to_generic),
    ])
    .await;
    s.wait_ready_condition("subscriptions", "to-memory", "True", &[], WAIT)
        .await;
    // The generic Channel is refused, and its subscription does not
    // deliver from the InMemoryChannel's store.
    s.wait_ready_condition(
        "subscriptions",
        "to-generic",
        "False",
        &["ChannelNotReady", "Channel default/orders is not ready"],
        WAIT,
    )
    .await;
    let channels = request(Method::GET, &s.admin_url("/api/v1/channels"), &[], "").await;
    assert!(
        channels.body.contains("ChannelNameTaken"),
        "{}",
        channels.body
    );
}

#[tokio::test]
async fn a_kafka_channel_without_a_kafka_says_which_setting_it_needs() {
    let channel =
        "apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nmetadata:\n  name: k\n";
    let s = TestServer::start(&[("k.yaml", channel)]).await;
    s.wait_ready_condition(
        "channels",
        "k",
        "False",
        &["BrokerConfigInvalid", "--kafka-bootstrap-servers"],
        WAIT,
    )
    .await;
}
