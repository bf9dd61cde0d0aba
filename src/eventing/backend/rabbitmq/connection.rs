//! One RabbitMQ connection per broker, kept up by a background task.
//!
//! The task connects, declares what the broker owns (its exchange, and each
//! trigger queue with its binding), opens the confirm-mode publishing channel,
//! and only then offers the [`Session`] to appends and subscriptions. When the
//! connection or the publishing channel is lost it withdraws the session (so
//! appends fail fast with 503 + Retry-After), and reconnects with exponential
//! backoff. Messages that were delivered but not acked come back through
//! RabbitMQ's redelivery once the subscriptions consume again.
//!
//! The link's [`Health`] is the broker's live readiness: Ready while a
//! session is up, NotReady with RabbitMQ's own reason (`NOT_ALLOWED - vhost
//! orders not found`, `ACCESS_REFUSED - Login was refused`) while it cannot
//! connect. A session lost and re-established within [`GRACE`] does not
//! show.
//!
//! [`GRACE`]: crate::eventing::health::GRACE

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use tokio::sync::watch;

use super::config::{RabbitConnectionConfig, redacted};
use crate::api::rabbitmq::QueueType;
use crate::backoff::Backoff;
use crate::eventing::backend::BACKEND_UNAVAILABLE;
use crate::eventing::health::{Health, HealthCell};

/// First and longest pause between connection attempts.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a live session is checked for a closed connection or channel
/// (lapin reports most losses at once as events; this catches the rest).
const HEALTH_CHECK: Duration = Duration::from_millis(250);
/// How long stopping waits for consumer channels to flush their acks.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A live connection with its publishing channel (publisher confirms on).
pub(crate) struct Session {
    pub connection: Connection,
    pub publisher: Channel,
}

impl Session {
    fn is_healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// What the broker owns in RabbitMQ, redeclared on every connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Topology {
    pub exchange: String,
    /// Trigger queue name → its binding arguments.
    pub queues: BTreeMap<String, FieldTable>,
}

/// The shared connection of one broker.
pub(crate) struct Link {
    config: RabbitConnectionConfig,
    /// Connection name shown in RabbitMQ's management UI.
    name: String,
    session: watch::Sender<Option<Arc<Session>>>,
    topology: Mutex<Topology>,
    last_error: Mutex<String>,
    /// Ready while connected; why not otherwise.
    health: HealthCell,
    /// Set once the first connection attempt ended, either way.
    attempted: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    /// Consumer channels being closed (their acks flushed first), which
    /// stopping waits for before it closes the connection.
    closing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Link {
    /// Starts the connection task.
    pub(crate) fn start(
        config: RabbitConnectionConfig,
        name: String,
        topology: Topology,
    ) -> Arc<Link> {
        let link = Arc::new(Link {
            config,
            name,
            session: watch::channel(None).0,
            topology: Mutex::new(topology),
            last_error: Mutex::new("not connected yet".into()),
            health: HealthCell::default(),
            attempted: watch::channel(false).0,
            stop: watch::channel(false).0,
            closing: Mutex::default(),
        });
        tokio::spawn(run(link.clone()));
        link
    }

    /// The live session, if connected.
    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.session.borrow().clone()
    }

    /// Waits for a live session; `None` once the link is stopped.
    pub(crate) async fn next_session(&self) -> Option<Arc<Session>> {
        let mut sessions = self.session.subscribe();
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow() {
                return None;
            }
            if let Some(session) = sessions.borrow_and_update().clone() {
                return Some(session);
            }
            tokio::select! {
                changed = sessions.changed() => if changed.is_err() { return None },
                _ = stop.changed() => {}
            }
        }
    }

    /// Waits up to `timeout` for the first connection attempt to end;
    /// whether it connected. A refused connection ends it at once, so a
    /// broker whose RabbitMQ is down does not hold up the others' start.
    pub(crate) async fn wait_first_attempt(&self, timeout: Duration) -> bool {
        let mut attempted = self.attempted.subscribe();
        let _ = tokio::time::timeout(timeout, attempted.wait_for(|a| *a)).await;
        self.current().is_some()
    }

    /// Why the link is not connected (the last connection error).
    pub(crate) fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the link is connected, or why not (see the module doc).
    pub(crate) fn health(&self) -> Health {
        self.health.get()
    }

    pub(crate) fn queue_type(&self) -> QueueType {
        self.config.queue_type
    }

    pub(crate) fn exchange(&self) -> String {
        self.topology().exchange
    }

    pub(crate) fn topology(&self) -> Topology {
        self.topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a trigger queue so that every later connection redeclares it.
    pub(crate) fn own_queue(&self, queue: &str, binding: FieldTable) {
        self.topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queues
            .insert(queue.to_owned(), binding);
    }

    /// Forgets a trigger queue (deleted).
    pub(crate) fn disown_queue(&self, queue: &str) -> Option<FieldTable> {
        self.topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queues
            .remove(queue)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Runs a consumer channel's close, which [`Link::stop`] then waits for.
    pub(crate) fn closing(&self, close: impl std::future::Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut closing = self.closing.lock().unwrap_or_else(|e| e.into_inner());
        closing.retain(|task| !task.is_finished());
        closing.push(runtime.spawn(close));
    }

    /// Stops reconnecting, lets the consumer channels being closed flush
    /// their acks, and closes the connection.
    pub(crate) async fn stop(&self) {
        self.stop.send_replace(true);
        let closing = std::mem::take(&mut *self.closing.lock().unwrap_or_else(|e| e.into_inner()));
        let closed = futures::future::join_all(closing);
        if tokio::time::timeout(CLOSE_GRACE, closed).await.is_err() {
            tracing::debug!(link = %self.name, "consumer channels did not close in time; RabbitMQ requeues their unacked messages");
        }
        if let Some(session) = self.session.send_replace(None) {
            let _ = session
                .connection
                .close(200, "pilotlight stopping".into())
                .await;
        }
    }

    /// Records why the link is not connected: appends say so at once; the
    /// health shows it unless the link is back within the grace.
    fn set_error(&self, error: String) {
        self.health.failing(BACKEND_UNAVAILABLE, error.clone());
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    fn set_connected(&self, session: Arc<Session>) {
        self.session.send_replace(Some(session));
        self.health.set(Health::Ready);
        self.attempted.send_replace(true);
    }
}

/// The connection task: connect, serve, notice the loss, back off, repeat.
async fn run(link: Arc<Link>) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    let mut stop = link.stop.subscribe();
    while !link.is_stopped() {
        let attempt = tokio::select! {
            attempt = connect(&link) => attempt,
            _ = stop.wait_for(|s| *s) => break,
        };
        let pause = match attempt {
            Ok(session) => {
                tracing::info!(connection = %link.name, uri = %redacted(&link.config.uri), "connected to RabbitMQ");
                let session = Arc::new(session);
                link.set_connected(session.clone());
                let lost = tokio::select! {
                    lost = wait_for_loss(&session) => lost,
                    _ = stop.wait_for(|s| *s) => break,
                };
                link.session.send_replace(None);
                tracing::warn!(connection = %link.name, reason = %lost, "lost the RabbitMQ connection; reconnecting");
                link.set_error(format!(
                    "lost the connection to RabbitMQ at {}: {lost}; reconnecting",
                    redacted(&link.config.uri)
                ));
                let _ = session.connection.close(200, "reconnecting".into()).await;
                backoff.reset();
                backoff.next_delay()
            }
            Err(e) => {
                let pause = backoff.next_delay();
                tracing::warn!(connection = %link.name, error = %e, "RabbitMQ is not usable; retrying in {pause:?}");
                link.set_error(e);
                link.attempted.send_replace(true);
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    link.session.send_replace(None);
}

/// Connects, declares the topology and opens the publishing channel. The
/// error names the RabbitMQ and the step that failed.
async fn connect(link: &Link) -> Result<Session, String> {
    let uri = &link.config.uri;
    let properties = ConnectionProperties::default().with_connection_name(link.name.clone().into());
    let connection = Connection::connect_uri(uri.clone(), properties)
        .await
        .map_err(|e| connect_failure(uri, &e))?;
    let set_up = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        let topology = link.topology();
        declare_exchange(&channel, &topology.exchange).await?;
        for (queue, binding) in &topology.queues {
            declare_queue(
                &channel,
                &topology.exchange,
                queue,
                link.config.queue_type,
                binding.clone(),
            )
            .await?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("cannot enable publisher confirms: {e}"))?;
        Ok::<_, String>(channel)
    };
    match set_up.await {
        Ok(publisher) => Ok(Session {
            connection,
            publisher,
        }),
        Err(e) => {
            let _ = connection.close(200, "set-up failed".into()).await;
            Err(format!(
                "connected to RabbitMQ at {}, but {e}",
                redacted(uri)
            ))
        }
    }
}

/// Why RabbitMQ at `uri` refused a connection, with RabbitMQ's own reason
/// (lapin's error carries it: `NOT_ALLOWED - vhost orders not found`) and
/// what to do about the usual causes. Shared by the broker and the
/// RabbitmqSource.
pub(crate) fn connect_failure(uri: &AMQPUri, error: &lapin::Error) -> String {
    let hint = match error.kind() {
        ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => format!(
                "; the vhost '{}' does not exist or the user may not use it: create it \
                 (rabbitmqctl add_vhost) and grant the user access, or fix the URI's path \
                 (amqp://host and amqp://host/ are the default vhost /, amqp://host/name is 'name')",
                uri.vhost
            ),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                "; RabbitMQ refused user '{}': check the username and password",
                uri.authority.userinfo.username
            ),
            _ => String::new(),
        },
        ErrorKind::IOError(_) => {
            "; check that RabbitMQ is running and listens at that host and port".to_owned()
        }
        _ => String::new(),
    };
    format!(
        "cannot connect to RabbitMQ at {}: {error}{hint}",
        redacted(uri)
    )
}

/// Resolves when the session's connection or publishing channel is gone.
async fn wait_for_loss(session: &Session) -> String {
    let mut events = session.connection.events_listener();
    let mut check = tokio::time::interval(HEALTH_CHECK);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => return e.to_string(),
                Some(_) => {}
                None => return "connection closed".into(),
            },
            _ = check.tick() => {
                if !session.is_healthy() {
                    return "connection or channel closed".into();
                }
            }
        }
    }
}

/// The broker's exchange: durable, type headers.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), String> {
    channel
        .exchange_declare(
            short(exchange)?,
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot declare exchange '{exchange}': {e}"))
}

/// A trigger queue of the given type, bound to the exchange with `binding`.
pub(crate) async fn declare_queue(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    queue_type: QueueType,
    binding: FieldTable,
) -> Result<(), String> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(queue_type.as_str())),
    );
    channel
        .queue_declare(
            short(queue)?,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|e| {
            format!("cannot declare queue '{queue}' ({} queue): {e}; if the queue exists with another type, delete it or set the RabbitmqBrokerConfig's queueType to match", queue_type.as_str())
        })?;
    channel
        .queue_bind(
            short(queue)?,
            short(exchange)?,
            ShortString::default(),
            QueueBindOptions::default(),
            binding,
        )
        .await
        .map_err(|e| format!("cannot bind queue '{queue}' to exchange '{exchange}': {e}"))
}

/// An AMQP short string (names are at most 255 bytes; pilotlight's names are
/// shortened to fit, see `super::fit`).
pub(crate) fn short(text: &str) -> Result<ShortString, String> {
    ShortString::try_new(text).map_err(|e| format!("name '{text}': {e}"))
}
