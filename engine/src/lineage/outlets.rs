//! Where a run's events go, in the background so that neither a slow store nor a
//! collector that is down slows the run: the log next to the run's history (batched into
//! one object a second) and a collector over HTTP (a bounded queue, retried with
//! backoff; what it does not take is left in the log for `backfill lineage --send`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::collector::{post, Posted};
use crate::history::History;
use crate::pipeline::{ApiKey, Collector, LineageSettings};

/// How often the log's new lines are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Events a collector may be behind by before newer ones are left to the log.
const QUEUE: usize = 10_000;

/// The longest wait between two tries to deliver an event.
const MOST_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Outlets {
    pub(super) console: bool,
    log: Option<Log>,
    collector: Option<Delivery>,
}

/// The log's writer: a task fed through a channel, finished by closing the channel.
struct Log {
    sender: Mutex<Option<mpsc::UnboundedSender<String>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Events on their way to a collector.
struct Delivery {
    url: String,
    queue: Mutex<Option<mpsc::Sender<String>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    progress: Arc<Progress>,
    timeout: Duration,
}

#[derive(Default)]
struct Progress {
    queued: AtomicUsize,
    delivered: AtomicUsize,
    /// Left to the log as the queue was full.
    left: AtomicUsize,
    /// The last try failed: the collector is down or refusing.
    failing: AtomicBool,
}

impl Outlets {
    pub(super) fn new(settings: &LineageSettings, history: History, run_id: &str) -> Outlets {
        let on = !settings.disabled;
        Outlets {
            console: on && settings.console,
            log: (on && settings.log).then(|| Log::start(history, run_id.to_string())),
            collector: settings
                .http
                .clone()
                .filter(|_| on)
                .and_then(Delivery::start),
        }
    }

    /// Whether events go nowhere (lineage disabled, or every transport off): then none is
    /// built.
    pub(super) fn off(&self) -> bool {
        !self.console && self.log.is_none() && self.collector.is_none()
    }

    /// Takes one event, as JSON text.
    pub(super) fn take(&self, line: String) {
        if let Some(collector) = &self.collector {
            collector.take(line.clone());
        }
        if let Some(log) = &self.log {
            log.send(line);
        }
    }

    /// Writes what the log holds, and gives the collector a bounded time to take the rest.
    pub(super) async fn finish(&self) {
        if let Some(collector) = &self.collector {
            collector.finish().await;
        }
        if let Some(log) = &self.log {
            log.finish().await;
        }
    }
}

impl Log {
    /// The log of run `run_id` in `history`: lines batched into one object a second.
    fn start(history: History, run_id: String) -> Log {
        let (sender, mut lines) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let mut batch = String::new();
            let mut written = 0;
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    line = lines.recv() => match line {
                        Some(line) => {
                            batch.push_str(&line);
                            batch.push('\n');
                        }
                        None => break,
                    },
                    _ = tick.tick() => write(&history, &run_id, &mut written, &mut batch).await,
                }
            }
            write(&history, &run_id, &mut written, &mut batch).await;
        });
        Log {
            sender: Mutex::new(Some(sender)),
            task: Mutex::new(Some(task)),
        }
    }

    fn send(&self, item: String) {
        if let Some(sender) = self.sender.lock().expect("not poisoned").as_ref() {
            let _ = sender.send(item);
        }
    }

    async fn finish(&self) {
        drop(self.sender.lock().expect("not poisoned").take());
        let task = self.task.lock().expect("not poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Writes `batch` as the log's next object, if it holds anything; kept for the next
/// write if it cannot be written now.
async fn write(history: &History, run_id: &str, written: &mut usize, batch: &mut String) {
    if batch.is_empty() {
        return;
    }
    match history.lineage_batch(run_id, *written, batch).await {
        Ok(()) => {
            *written += 1;
            batch.clear();
        }
        Err(error) => tracing::warn!("could not write the run's lineage log: {error}"),
    }
}

impl Delivery {
    /// Delivery to `collector`, unless its API key cannot be read: its events then wait in
    /// the log.
    fn start(collector: Collector) -> Option<Delivery> {
        let key = match collector.api_key.as_ref().map(ApiKey::read).transpose() {
            Ok(key) => key,
            Err(why) => {
                tracing::warn!(
                    "no OpenLineage events go to {}: {why}; the run's lineage log keeps them",
                    collector.url
                );
                return None;
            }
        };
        let (queue, mut events) = mpsc::channel::<String>(QUEUE);
        let progress = Arc::new(Progress::default());
        let url = collector.url.to_string();
        let timeout = collector.timeout;
        let task = {
            let progress = progress.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while let Some(event) = events.recv().await {
                    deliver(&client, &collector, key.as_deref(), event, &progress).await;
                }
            })
        };
        Some(Delivery {
            url,
            queue: Mutex::new(Some(queue)),
            task: Mutex::new(Some(task)),
            progress,
            timeout,
        })
    }

    fn take(&self, event: String) {
        let queue = self.queue.lock().expect("not poisoned");
        let Some(queue) = queue.as_ref() else { return };
        match queue.try_send(event) {
            Ok(()) => self.progress.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.progress.left.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Waits for the queue to empty, unless the collector is failing, and for no longer
    /// than one delivery may take; then says what it did not take.
    async fn finish(&self) {
        drop(self.queue.lock().expect("not poisoned").take());
        let Some(mut task) = self.task.lock().expect("not poisoned").take() else {
            return;
        };
        if self.progress.failing.load(Ordering::Relaxed)
            || tokio::time::timeout(self.timeout, &mut task).await.is_err()
        {
            task.abort();
        }
        let progress = &self.progress;
        let delivered = progress.delivered.load(Ordering::Relaxed);
        let undelivered = progress.queued.load(Ordering::Relaxed) - delivered
            + progress.left.load(Ordering::Relaxed);
        if undelivered > 0 {
            tracing::warn!(
                "{undelivered} OpenLineage events were not delivered to {}: the run's lineage log keeps them (`backfill lineage PIPELINE RUN --send` sends them)",
                self.url
            );
        }
    }
}

/// Delivers one event, trying again with backoff while the collector is down; an event
/// the collector refuses as such is left to the log.
async fn deliver(
    client: &reqwest::Client,
    collector: &Collector,
    key: Option<&str>,
    event: String,
    progress: &Progress,
) {
    let mut wait = Duration::from_millis(500);
    loop {
        match post(client, collector, key, event.clone()).await {
            Posted::Taken => {
                progress.failing.store(false, Ordering::Relaxed);
                progress.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Posted::Refused(why) => {
                tracing::warn!("the OpenLineage collector refused an event: {why}");
                return;
            }
            Posted::Unreachable(why) => {
                if !progress.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the OpenLineage collector does not take events ({why}): trying again in the background");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MOST_BACKOFF);
            }
        }
    }
}
