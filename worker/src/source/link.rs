//! The handle a session holds and the link its source threads hold.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, watch};

use bus_schema::{InputRoute, RtpAudioStats, RtpSourceStats, RtpVideoStats, SourceEvent};

use super::{Gop, Media, SourceError, SourceExit, SourceFault, INPUT_QUEUE, STOP_TIMEOUT};

/// Requests from the handle to the source, and counters back.
#[derive(Default)]
struct Control {
    stop: Mutex<bool>,
    wake: Condvar,
    keyframe_wanted: AtomicBool,
    /// Merged input waiting for a source that takes it ([`INPUT_QUEUE`]
    /// at most; past that new events are dropped and counted).
    input: Mutex<VecDeque<SourceEvent>>,
    input_dropped: AtomicU64,
    frames_encoded: AtomicU64,
    /// An RTP source's counters, as its receive threads last wrote them.
    rtp: Mutex<Option<RtpSourceStats>>,
    /// The video since the last IDR (RTP sources). Publishing holds this
    /// lock while it sends, so a subscriber that takes it with
    /// [`SourceTap::subscribe_with_gop`] gets each item once: in the group
    /// or from its receiver.
    gop: Mutex<Gop>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking source thread must not take the handle down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a source thread holds: the output, the requests, the stop signal.
#[derive(Clone)]
pub struct SourceLink {
    media: broadcast::Sender<Media>,
    control: Arc<Control>,
    exit: watch::Sender<Option<SourceExit>>,
}

impl SourceLink {
    /// Sends to every subscriber; having none is normal.
    pub fn publish(&self, media: Media) {
        let mut gop = lock(&self.control.gop);
        gop.push(&media);
        let _ = self.media.send(media);
    }

    /// Whether a keyframe was asked for since the last call (which clears it).
    pub fn take_keyframe_request(&self) -> bool {
        self.control.keyframe_wanted.swap(false, Ordering::AcqRel)
    }

    /// The merged input handed to the source since the last call, in order.
    pub fn take_input(&self) -> Vec<SourceEvent> {
        lock(&self.control.input).drain(..).collect()
    }

    /// Counts one encoded video frame.
    pub fn count_frame(&self) {
        self.control.frames_encoded.fetch_add(1, Ordering::Relaxed);
    }

    /// An RTP source's video counters, for `session.stats`.
    pub fn set_rtp_video(&self, video: &RtpVideoStats, keyframe_requests: u64) {
        let mut rtp = lock(&self.control.rtp);
        let rtp = rtp.get_or_insert_with(RtpSourceStats::default);
        rtp.video.clone_from(video);
        rtp.keyframe_requests = keyframe_requests;
    }

    /// An RTP source's audio counters, for `session.stats`.
    pub fn set_rtp_audio(&self, audio: &RtpAudioStats) {
        lock(&self.control.rtp)
            .get_or_insert_with(RtpSourceStats::default)
            .audio = Some(audio.clone());
    }

    pub fn stop_requested(&self) -> bool {
        *lock(&self.control.stop)
    }

    /// Sleeps until `deadline`, waking early when a stop is requested.
    /// Returns `true` if the source should stop.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        let mut stopped = lock(&self.control.stop);
        loop {
            if *stopped {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = self
                .control
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn request_stop(&self) {
        *lock(&self.control.stop) = true;
        self.control.wake.notify_all();
    }

    /// Records how the source ended; the first record wins.
    fn record_exit(&self, exit: SourceExit) {
        self.exit.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(exit);
                true
            } else {
                false
            }
        });
    }
}

/// Records a panic as a failure while the thread unwinds.
struct PanicGuard(Option<SourceLink>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            link.record_exit(SourceExit::Failed(SourceFault::Panicked));
            link.request_stop();
        }
    }
}

/// What a viewer holds of a source: its media and the keyframe request.
#[derive(Clone)]
pub struct SourceTap {
    media: broadcast::Sender<Media>,
    control: Arc<Control>,
}

impl SourceTap {
    pub fn subscribe(&self) -> broadcast::Receiver<Media> {
        self.media.subscribe()
    }

    /// The video since the source's last IDR and a receiver of everything
    /// after it, taken together: nothing falls between them or is in both.
    pub fn subscribe_with_gop(&self) -> (Gop, broadcast::Receiver<Media>) {
        let gop = lock(&self.control.gop);
        (gop.clone(), self.media.subscribe())
    }

    /// The next video frame will be an IDR. Calls before that frame coalesce.
    pub fn request_keyframe(&self) {
        self.control.keyframe_wanted.store(true, Ordering::Release);
    }
}

/// A running source. Dropping it stops the source without waiting.
pub struct SourceHandle {
    link: SourceLink,
    exit: watch::Receiver<Option<SourceExit>>,
    threads: Vec<JoinHandle<()>>,
    /// Each thread holds a clone; the channel closes when all have ended.
    alive_tx: Option<mpsc::Sender<()>>,
    alive_rx: mpsc::Receiver<()>,
    /// Live before its first frame (see [`Self::set_live_on_start`]).
    live_on_start: bool,
    /// Where the session's merged input goes (see [`Self::set_input_route`]).
    input_route: InputRoute,
}

impl SourceHandle {
    /// A handle with no threads yet. `media_capacity` is the broadcast depth
    /// per subscriber (about two seconds of media).
    pub fn new(media_capacity: usize) -> Self {
        let (media, _) = broadcast::channel(media_capacity.max(1));
        let (exit, exit_rx) = watch::channel(None);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        SourceHandle {
            link: SourceLink {
                media,
                control: Arc::default(),
                exit,
            },
            exit: exit_rx,
            threads: Vec::new(),
            alive_tx: Some(alive_tx),
            alive_rx,
            live_on_start: false,
            input_route: InputRoute::None,
        }
    }

    /// Runs `body` on a new named OS thread. `Ok(())` means the source ended
    /// cleanly (asked to stop, or its input ended), `Err(reason)` that it
    /// failed; either way the source's other threads are asked to stop, and
    /// unless a stop was requested [`exited`](Self::exited) reports it.
    pub fn spawn_thread<F>(&mut self, name: &str, body: F) -> Result<(), SourceError>
    where
        F: FnOnce(SourceLink) -> Result<(), SourceFault> + Send + 'static,
    {
        let link = self.link.clone();
        let alive = self.alive_tx.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _alive = alive;
                let mut guard = PanicGuard(Some(link.clone()));
                let outcome = body(link.clone());
                guard.0 = None;
                match outcome {
                    Ok(()) => link.record_exit(SourceExit::Stopped),
                    Err(fault) => {
                        tracing::warn!(%fault, "source failed");
                        link.record_exit(SourceExit::Failed(fault));
                    }
                }
                link.request_stop();
            })
            .map_err(SourceError::Spawn)?;
        self.threads.push(thread);
        Ok(())
    }

    /// A cloneable view of the running source for consumers (viewers): they
    /// subscribe and ask for keyframes without owning the source.
    pub fn tap(&self) -> SourceTap {
        SourceTap {
            media: self.link.media.clone(),
            control: self.link.control.clone(),
        }
    }

    /// Every consumer gets every frame from now on; a consumer more than
    /// about two seconds behind gets `Lagged` and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Media> {
        self.link.media.subscribe()
    }

    /// The next video frame will be an IDR. Calls before that frame coalesce.
    pub fn request_keyframe(&self) {
        self.link
            .control
            .keyframe_wanted
            .store(true, Ordering::Release);
    }

    /// Says where the session's merged input goes: [`InputRoute::Source`]
    /// for a source whose threads read it ([`SourceLink::take_input`]),
    /// [`InputRoute::Bus`] for one whose producer reads it from NATS (the
    /// session publishes it), [`InputRoute::None`] (the default) for a
    /// source that takes none. Set by the factory before it returns.
    pub fn set_input_route(&mut self, route: InputRoute) {
        self.input_route = route;
    }

    pub fn input_route(&self) -> InputRoute {
        self.input_route
    }

    /// Hands merged input to a source whose route is
    /// [`InputRoute::Source`]; returns how many events it queued (none for
    /// other routes, and none past [`INPUT_QUEUE`] waiting events: a source
    /// that stopped reading loses input, never memory).
    pub fn send_input(&self, events: &[SourceEvent]) -> usize {
        if self.input_route != InputRoute::Source || events.is_empty() {
            return 0;
        }
        let mut queue = lock(&self.link.control.input);
        let room = INPUT_QUEUE.saturating_sub(queue.len()).min(events.len());
        queue.extend(events[..room].iter().cloned());
        let dropped = events.len() - room;
        if dropped > 0 {
            self.link
                .control
                .input_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        room
    }

    /// Input events dropped because the source's queue was full.
    pub fn input_dropped(&self) -> u64 {
        self.link.control.input_dropped.load(Ordering::Relaxed)
    }

    pub fn frames_encoded(&self) -> u64 {
        self.link.control.frames_encoded.load(Ordering::Relaxed)
    }

    /// What an RTP source received (as of its threads' last check, at most
    /// about 50 ms old); `None` for other sources.
    pub fn rtp_stats(&self) -> Option<RtpSourceStats> {
        lock(&self.link.control.rtp).clone()
    }

    /// The source is up as soon as it started, before any frame: a push
    /// source (RTP) whose sockets are bound, whose media may begin later.
    pub fn set_live_on_start(&mut self) {
        self.live_on_start = true;
    }

    /// Whether a session may go live now: the source produced a frame, or
    /// is [live on start](Self::set_live_on_start).
    pub fn is_live(&self) -> bool {
        self.live_on_start || self.frames_encoded() > 0
    }

    /// Resolves when the source ends on its own (normally a failure); pending
    /// forever while it runs. Cancel-safe, and resolves again if called again.
    pub async fn exited(&mut self) -> SourceExit {
        loop {
            if let Some(exit) = self.exit.borrow_and_update().clone() {
                return exit;
            }
            if self.exit.changed().await.is_err() {
                // Unreachable while `self.link` holds the sender.
                return SourceExit::Failed(SourceFault::Vanished);
            }
        }
    }

    /// Stops the source and waits, at most [`STOP_TIMEOUT`], for its threads.
    pub async fn stop(mut self) {
        self.link.request_stop();
        self.alive_tx = None;
        let ended = tokio::time::timeout(STOP_TIMEOUT, async {
            while self.alive_rx.recv().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            tracing::warn!(timeout = ?STOP_TIMEOUT, "source threads still running after stop; detaching them");
            return;
        }
        for thread in self.threads.drain(..) {
            // The thread has returned from its body; this is its last breath.
            if thread.join().is_err() {
                tracing::warn!("source thread panicked");
            }
        }
    }

    /// Test hook: the join handles, to watch the threads end after a drop.
    #[cfg(test)]
    pub(crate) fn take_threads(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.threads)
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.link.request_stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn failure_in_a_thread_is_reported_and_stops_the_others() {
        let mut handle = SourceHandle::new(4);
        handle
            .spawn_thread("test-waiter", |link| {
                while !link.sleep_until(Instant::now() + Duration::from_secs(10)) {}
                Ok(())
            })
            .unwrap();
        handle
            .spawn_thread("test-failer", |_| Err(SourceFault::Injected(7)))
            .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), handle.exited())
            .await
            .expect("exited resolves after a failure");
        assert_eq!(exit, SourceExit::Failed(SourceFault::Injected(7)));
        // A second call gives the same answer.
        assert_eq!(
            handle.exited().await,
            SourceExit::Failed(SourceFault::Injected(7))
        );
        let started = Instant::now();
        handle.stop().await;
        assert!(started.elapsed() < STOP_TIMEOUT);
    }

    #[tokio::test]
    async fn a_panic_is_a_failure() {
        let mut handle = SourceHandle::new(4);
        handle
            .spawn_thread("test-panicker", |_| panic!("deliberate"))
            .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), handle.exited())
            .await
            .expect("exited resolves after a panic");
        assert_eq!(exit, SourceExit::Failed(SourceFault::Panicked));
    }

    #[test]
    fn input_reaches_only_a_source_that_takes_it_and_stays_bounded() {
        let key = |down| SourceEvent::Key {
            code: "KeyA".into(),
            down,
        };
        let mut handle = SourceHandle::new(4);
        assert_eq!(
            handle.send_input(&[key(true)]),
            0,
            "route none takes nothing"
        );
        assert!(handle.link.take_input().is_empty());
        handle.set_input_route(InputRoute::Bus);
        assert_eq!(
            handle.send_input(&[key(true)]),
            0,
            "the bus route is the session's"
        );
        handle.set_input_route(InputRoute::Source);
        assert_eq!(handle.send_input(&[key(true), key(false)]), 2);
        assert_eq!(handle.link.take_input(), vec![key(true), key(false)]);
        assert!(handle.link.take_input().is_empty(), "taken once");
        let many = vec![key(true); INPUT_QUEUE + 10];
        assert_eq!(handle.send_input(&many), INPUT_QUEUE);
        assert_eq!(handle.input_dropped(), 10);
        assert_eq!(handle.link.take_input().len(), INPUT_QUEUE);
        assert_eq!(handle.send_input(&[key(false)]), 1, "room again once read");
    }

    #[tokio::test]
    async fn exited_is_pending_while_running() {
        let mut handle = SourceHandle::new(4);
        handle
            .spawn_thread("test-waiter", |link| {
                while !link.sleep_until(Instant::now() + Duration::from_secs(10)) {}
                Ok(())
            })
            .unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(100), handle.exited()).await;
        assert!(pending.is_err(), "exited resolved while the source ran");
        let started = Instant::now();
        handle.stop().await;
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
