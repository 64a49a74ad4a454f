//! Heartbeats out, heartbeats in, and the lease they carry.
//!
//! Every interval the worker publishes its heartbeat. It also listens to all
//! heartbeats: the others' feed placement ([`crate::core::Cluster`]); its own,
//! echoed back by the server, renew its lease ([`crate::core::Lease`]). When
//! the lease runs out, every session stops streaming at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bus_schema::{decode_record, Heartbeat, HeldSession, Timestamp};
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::core::LeaseStatus;
use crate::session::Cmd;
use crate::{Ctx, WorkerError};

fn snapshot(ctx: &Ctx, draining_override: bool) -> Heartbeat {
    let lease_held = ctx.lease_gate.held(Instant::now());
    let dir = ctx.dir.lock().expect("directory lock");
    let sessions = if draining_override {
        Vec::new()
    } else {
        dir.running()
            .into_iter()
            .map(|(id, epoch, h)| HeldSession {
                id,
                epoch,
                viewers: h.viewers.load(Ordering::Relaxed),
                suspended: h.paused.load(Ordering::Relaxed) || !lease_held,
            })
            .collect()
    };
    Heartbeat {
        worker: ctx.me.clone(),
        seq: ctx.heartbeat_seq.fetch_add(1, Ordering::Relaxed) + 1,
        interval_ms: ctx.config.heartbeat_interval.as_millis() as u64,
        capacity: dir.capacity(),
        sessions,
        draining: dir.draining() || draining_override,
        sent_at: Timestamp::now(),
    }
}

pub async fn start(ctx: Arc<Ctx>) -> Result<(), WorkerError> {
    let mut sub = ctx
        .bus
        .client
        .subscribe(ctx.bus.subjects.heartbeat_any())
        .await?;

    // Inbound: placement table and lease renewal.
    let c = ctx.clone();
    ctx.tracker.spawn(async move {
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
                _ = c.cancel.cancelled() => break,
            };
            let hb: Heartbeat = match decode_record(&msg.payload) {
                Ok(hb) => hb,
                Err(e) => {
                    debug!(subject = %msg.subject, error = %e, "unreadable heartbeat ignored");
                    continue;
                }
            };
            let now = Instant::now();
            if hb.worker == c.me {
                c.lease_gate.extend_to(now + *c.config.lease);
                if c.lease.lock().expect("lease lock").renew(now) {
                    info!(worker_id = %c.me, "NATS reachable again; lease renewed");
                }
            } else {
                c.cluster.lock().expect("cluster lock").observe(now, hb);
            }
        }
    });

    // Outbound heartbeats.
    let c = ctx.clone();
    ctx.tracker.spawn(async move {
        let mut tick = tokio::time::interval(*c.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let subject = c.bus.subjects.heartbeat(&c.me);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = c.cancel.cancelled() => break,
            }
            let hb = snapshot(&c, false);
            match c.bus.publish(&subject, &hb).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    warn!(worker_id = %c.me, error = %e, "heartbeat not published");
                }
                Err(_) => {}
            }
            c.cluster
                .lock()
                .expect("cluster lock")
                .prune(Instant::now());
        }
    });

    // Lease watch: checked four times per interval so that a worker that
    // wakes from a freeze notices at once.
    let c = ctx.clone();
    ctx.tracker.spawn(async move {
        let mut tick = tokio::time::interval(*c.config.heartbeat_interval / 4);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = c.cancel.cancelled() => break,
            }
            let status = c.lease.lock().expect("lease lock").check(Instant::now());
            if status == LeaseStatus::JustExpired {
                let running = c.dir.lock().expect("directory lock").running();
                warn!(worker_id = %c.me, sessions = running.len(), "lease expired: NATS unreachable; stopping every session");
                for (_, _, h) in running {
                    let _ = h.tx.try_send(Cmd::LeaseLost);
                }
            } else if status == LeaseStatus::Expired {
                // Sessions started while the lease was out are stopped too.
                for (_, _, h) in c.dir.lock().expect("directory lock").running() {
                    let _ = h.tx.try_send(Cmd::LeaseLost);
                }
            }
        }
    });
    Ok(())
}

/// A last heartbeat with no sessions, so peers stop placing here at once.
pub async fn publish_final(ctx: &Ctx) {
    let hb = snapshot(ctx, true);
    let _ = ctx
        .bus
        .publish(&ctx.bus.subjects.heartbeat(&ctx.me), &hb)
        .await;
}
