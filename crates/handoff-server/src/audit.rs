//! The audit log: who did what to which file, link, team or account. Handlers record events with
//! [`AuditLog::record`], which only queues them; one background task writes queued events in batches, one
//! transaction each, so that recording a download costs a channel send rather than a synchronous commit on the
//! hot path. Readers call [`AuditLog::flush`] first, so a client always sees its own actions. Events still queued
//! when the process is killed are lost (at most one batch: what arrived in the last ~100 ms); a graceful shutdown
//! flushes.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use handoff_core::{AuditEvent, AuditId, AuditScope, FileRecord, MetadataStore, TeamId, User, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult};

/// Events waiting to be written; beyond this, recording waits for the writer (backpressure, not loss).
const QUEUE: usize = 10_000;
/// Events written per transaction.
const BATCH: usize = 500;
/// How long the writer keeps gathering events after the first one of a batch. Each batch is a transaction and a
/// sync on the metadata database's one writer, which the uploads' own commits queue behind: at 20 ms, under 4 KiB
/// uploads, audit batches were about a third of that writer's commits, and 100 ms gave 2–7 % more uploads per
/// second (bench/RESULTS.md). A reader never waits for the window: its flush ends it.
const GATHER: Duration = Duration::from_millis(100);

enum Message {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone, Debug)]
pub struct AuditLog {
    queue: mpsc::Sender<Message>,
    /// Cuts the writer's gathering window short once a flush is queued.
    flushing: Arc<Notify>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event(e) => write!(f, "Event({})", e.action),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl AuditLog {
    /// Starts the writer task; it ends when every `AuditLog` clone is dropped, after writing what is queued.
    pub fn start(meta: Arc<dyn MetadataStore>) -> Self {
        let (queue, mut inbox) = mpsc::channel::<Message>(QUEUE);
        let flushing = Arc::new(Notify::new());
        let flush_requested = flushing.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut waiting = Vec::new();
            while let Some(first) = inbox.recv().await {
                // Gather for up to GATHER after the first event (unless a reader is waiting or the batch is
                // full): a busy server then writes one transaction, one sync, per interval instead of one per
                // handful of events. The writer sleeps through the interval rather than waking for every event
                // (on a busy server each wake-up is a thread hand-off of its own); a reader's flush wakes it at once.
                let deadline = tokio::time::Instant::now() + GATHER;
                let mut next = Some(first);
                while let Some(message) = next.take() {
                    match message {
                        Message::Event(event) => batch.push(*event),
                        Message::Flush(done) => waiting.push(done),
                    }
                    if batch.len() >= BATCH {
                        break;
                    }
                    next = match inbox.try_recv() {
                        Ok(message) => Some(message),
                        Err(_) if waiting.is_empty() && tokio::time::Instant::now() < deadline => {
                            // A permit left by a flush that was already taken only ends a later window early.
                            tokio::select! {
                                () = tokio::time::sleep_until(deadline) => {}
                                () = flush_requested.notified() => {}
                            }
                            inbox.try_recv().ok()
                        }
                        Err(_) => None,
                    };
                }
                write(meta.as_ref(), &mut batch).await;
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Self { queue, flushing }
    }

    pub async fn record(&self, event: Event) {
        let Event(mut event, detail) = event;
        if !detail.is_empty() {
            event.detail = Some(serde_json::Value::Object(detail).to_string());
        }
        if self.queue.send(Message::Event(Box::new(event))).await.is_err() {
            tracing::warn!("audit writer has stopped; event dropped");
        }
    }

    /// Waits until every event recorded before this call is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            self.flushing.notify_one();
            let _ = written.await;
        }
    }
}

/// Writes a batch, retrying a few times while the store is unavailable; a batch that still fails is logged and
/// dropped rather than blocking every later event.
async fn write(meta: &dyn MetadataStore, batch: &mut Vec<AuditEvent>) {
    if batch.is_empty() {
        return;
    }
    for attempt in 1..=3 {
        match meta.append_audit(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, events = batch.len(), "could not write audit events");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
        }
    }
    tracing::error!(events = batch.len(), "audit events dropped after repeated failures");
    batch.clear();
}

/// An event being built: `Event::new("file.download").by(&user).on_file(&file)`.
#[derive(Debug)]
pub struct Event(AuditEvent, serde_json::Map<String, serde_json::Value>);

impl Event {
    pub fn new(action: &'static str) -> Self {
        Self(
            AuditEvent {
                id: AuditId::generate(),
                at: handoff_core::now(),
                action: action.to_owned(),
                actor: None,
                owner: None,
                team: None,
                file: None,
                detail: None,
            },
            serde_json::Map::new(),
        )
    }

    /// The signed-in account that acted (its name is kept in the detail, so the log reads well after renames).
    pub fn by(mut self, user: &User) -> Self {
        self.0.actor = Some(user.id);
        self.with("actor", user.username.as_str())
    }

    /// The event concerns `file`: the owner of a personal file sees it; for a team file, the team's owners and
    /// admins do (not its uploader, who may leave the team).
    pub fn on_file(mut self, file: &FileRecord) -> Self {
        self.0.owner = if file.team.is_none() { Some(file.owner) } else { None };
        self.0.team = file.team;
        self.0.file = Some(file.key.clone());
        self.with("file_name", file.name.as_str())
    }

    pub fn owner(mut self, owner: UserId) -> Self {
        self.0.owner = Some(owner);
        self
    }

    pub fn team(mut self, team: TeamId) -> Self {
        self.0.team = Some(team);
        self
    }

    /// Adds one field to the event's detail object.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.1.insert(key.to_owned(), value.into());
        self
    }
}

/// One audit event as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    at: OffsetDateTime,
    /// `file.upload`, `file.download`, `file.update`, `file.delete`, `file.expire`, `share.create`,
    /// `share.update`, `share.revoke`, `share.download`, `upload_link.create`, `upload_link.revoke`,
    /// `upload_link.upload`, `team.create`, `team.rename`, `team.delete`, `team.member_add`,
    /// `team.member_role`, `team.member_remove`, `team.transfer`, `auth.signin`, `admin.user_update`,
    /// `admin.team_update`
    #[schema(example = "file.download")]
    action: String,
    /// The file's key, when the event concerns a file.
    file_key: Option<String>,
    team_id: Option<String>,
    /// Who and what: `actor` (username), `file_name`, `username`, `role`, `share_id`, …
    #[schema(value_type = Object)]
    detail: serde_json::Value,
}

impl From<AuditEvent> for EventView {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id.to_string(),
            at: e.at,
            action: e.action,
            file_key: e.file.map(|k| k.to_string()),
            team_id: e.team.map(|t| t.to_string()),
            detail: e
                .detail
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or(serde_json::Value::Object(serde_json::Map::new())),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    events: Vec<EventView>,
    /// Pass as `before` to get older events; absent on the last page.
    next_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `next_before` of the previous page.
    before: Option<String>,
    /// Page size, 1 to the server's maximum; default 100.
    limit: Option<u32>,
}

/// A page of the log in `scope`, newest first.
pub async fn page(state: &crate::state::AppState, scope: AuditScope, query: AuditQuery) -> ApiResult<Json<EventList>> {
    let limit = crate::files::page_limit(state, query.limit)?;
    let before = query
        .before
        .map(|b| {
            uuid::Uuid::parse_str(&b)
                .map(AuditId)
                .map_err(|_| ApiError::bad_request("invalid_cursor", "`before` is not an event id"))
        })
        .transpose()?;
    state.audit.flush().await;
    let mut events = state.meta.audit_page(scope, before, limit.saturating_add(1)).await?;
    let next_before = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(EventList {
        events: events.into_iter().map(EventView::from).collect(),
        next_before,
    }))
}
