//! The aggregator in simulated time: scenarios, then a property test that
//! drives random viewers against a model of the source.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bus_schema::{InputEvent, TouchPhase};
use proptest::prelude::*;

use super::*;

fn t(ms: u64) -> Instant {
    // One base per test run; only offsets from it matter.
    thread_local!(static BASE: Instant = Instant::now());
    BASE.with(|b| *b + Duration::from_millis(ms))
}

fn key(code: &str, down: bool) -> InputEvent {
    InputEvent::Key {
        code: code.into(),
        down,
    }
}

fn key_out(code: &str, down: bool) -> SourceEvent {
    SourceEvent::Key {
        code: code.into(),
        down,
    }
}

fn button(button: u8, down: bool) -> InputEvent {
    InputEvent::MouseButton { button, down }
}

fn touch(id: u8, phase: TouchPhase, x: u16, y: u16) -> InputEvent {
    InputEvent::Touch { id, phase, x, y }
}

fn touch_out(id: u8, phase: TouchPhase, x: u16, y: u16) -> SourceEvent {
    SourceEvent::Touch { id, phase, x, y }
}

fn pad_button(pad: u8, button: u8, value: u8) -> InputEvent {
    InputEvent::PadButton { pad, button, value }
}

fn pad_axis(pad: u8, axis: u8, value: i16) -> InputEvent {
    InputEvent::PadAxis { pad, axis, value }
}

fn presence(pad: u8, connected: bool) -> InputEvent {
    InputEvent::PadPresence { pad, connected }
}

fn agg() -> Aggregator {
    Aggregator::new(Limits::default())
}

// --- keys and buttons ------------------------------------------------------

#[test]
fn a_key_goes_down_and_up() {
    let mut a = agg();
    assert_eq!(
        a.apply(t(0), "alice", &key("KeyA", true)),
        [key_out("KeyA", true)]
    );
    assert_eq!(a.snapshot().keys_down, ["KeyA"]);
    assert_eq!(
        a.apply(t(1), "alice", &key("KeyA", false)),
        [key_out("KeyA", false)]
    );
    assert!(a.snapshot().keys_down.is_empty());
    assert_eq!(a.holders(), 0);
}

#[test]
fn two_viewers_holding_one_key_give_one_down_and_one_up() {
    let mut a = agg();
    assert_eq!(
        a.apply(t(0), "alice", &key("ShiftLeft", true)),
        [key_out("ShiftLeft", true)]
    );
    assert_eq!(a.apply(t(1), "bob", &key("ShiftLeft", true)), []);
    // Alice lets go; Bob still holds it.
    assert_eq!(a.apply(t(2), "alice", &key("ShiftLeft", false)), []);
    assert_eq!(a.snapshot().keys_down, ["ShiftLeft"]);
    // Bob lets go: now it is up.
    assert_eq!(
        a.apply(t(3), "bob", &key("ShiftLeft", false)),
        [key_out("ShiftLeft", false)]
    );
    assert!(a.snapshot().keys_down.is_empty());
}

#[test]
fn key_repeat_is_idempotent() {
    let mut a = agg();
    assert_eq!(a.apply(t(0), "alice", &key("KeyW", true)).len(), 1);
    for i in 1..50 {
        assert_eq!(a.apply(t(i), "alice", &key("KeyW", true)), []);
    }
    // One up undoes any number of downs.
    assert_eq!(
        a.apply(t(60), "alice", &key("KeyW", false)),
        [key_out("KeyW", false)]
    );
    assert_eq!(a.apply(t(61), "alice", &key("KeyW", false)), []);
}

#[test]
fn stray_ups_are_ignored() {
    let mut a = agg();
    assert_eq!(a.apply(t(0), "alice", &key("KeyA", false)), []);
    assert_eq!(a.apply(t(0), "alice", &button(0, false)), []);
    // Bob's up does not release Alice's key.
    a.apply(t(1), "alice", &key("KeyA", true));
    assert_eq!(a.apply(t(2), "bob", &key("KeyA", false)), []);
    assert_eq!(a.snapshot().keys_down, ["KeyA"]);
    assert_eq!(a.holders(), 1);
}

#[test]
fn keys_down_are_sorted() {
    let mut a = agg();
    for code in ["KeyZ", "ControlLeft", "KeyA", "F12"] {
        a.apply(t(0), "alice", &key(code, true));
    }
    assert_eq!(
        a.snapshot().keys_down,
        ["ControlLeft", "F12", "KeyA", "KeyZ"]
    );
}

#[test]
fn mouse_buttons_have_union_semantics() {
    let mut a = agg();
    let down = |b| SourceEvent::MouseButton {
        button: b,
        down: true,
    };
    let up = |b| SourceEvent::MouseButton {
        button: b,
        down: false,
    };
    assert_eq!(a.apply(t(0), "alice", &button(0, true)), [down(0)]);
    assert_eq!(a.apply(t(0), "alice", &button(0, true)), []);
    assert_eq!(a.apply(t(1), "bob", &button(0, true)), []);
    assert_eq!(a.apply(t(1), "bob", &button(2, true)), [down(2)]);
    assert_eq!(a.snapshot().buttons_down, [0, 2]);
    assert_eq!(a.apply(t(2), "bob", &button(0, false)), []);
    assert_eq!(a.apply(t(3), "alice", &button(0, false)), [up(0)]);
    assert_eq!(a.apply(t(4), "bob", &button(2, false)), [up(2)]);
    assert!(a.snapshot().buttons_down.is_empty());
    assert_eq!(a.holders(), 0);
}

#[test]
fn a_viewer_may_hold_only_so_many_keys() {
    let mut a = Aggregator::new(Limits {
        max_keys_per_viewer: 2,
        ..Limits::default()
    });
    assert_eq!(a.apply(t(0), "alice", &key("KeyA", true)).len(), 1);
    assert_eq!(a.apply(t(0), "alice", &key("KeyB", true)).len(), 1);
    // The third is dropped, and so is its up.
    assert_eq!(a.apply(t(0), "alice", &key("KeyC", true)), []);
    assert_eq!(a.apply(t(0), "alice", &key("KeyC", false)), []);
    // Another viewer has its own allowance.
    assert_eq!(
        a.apply(t(0), "bob", &key("KeyC", true)),
        [key_out("KeyC", true)]
    );
    // Once a key is up there is room again.
    a.apply(t(1), "alice", &key("KeyA", false));
    assert_eq!(
        a.apply(t(1), "alice", &key("KeyD", true)),
        [key_out("KeyD", true)]
    );
}

#[test]
fn only_so_many_viewers_may_hold_something() {
    let mut a = Aggregator::new(Limits {
        max_viewers: 2,
        ..Limits::default()
    });
    a.apply(t(0), "v1", &key("KeyA", true));
    a.apply(t(0), "v2", &key("KeyB", true));
    assert_eq!(a.apply(t(0), "v3", &key("KeyC", true)), []);
    assert_eq!(a.apply(t(0), "v3", &touch(0, TouchPhase::Start, 1, 1)), []);
    assert_eq!(a.apply(t(0), "v3", &presence(0, true)), []);
    // Stateless input still passes.
    assert_eq!(
        a.apply(t(0), "v3", &InputEvent::MouseMove { dx: 1, dy: 1 })
            .len(),
        1
    );
    assert_eq!(a.holders(), 2);
    // When one lets go, v3 may hold something.
    a.apply(t(1), "v1", &key("KeyA", false));
    assert_eq!(
        a.apply(t(1), "v3", &key("KeyC", true)),
        [key_out("KeyC", true)]
    );
}

#[test]
fn events_out_of_range_are_dropped() {
    let mut a = agg();
    assert_eq!(a.apply(t(0), "alice", &key("Key A", true)), []);
    assert_eq!(a.apply(t(0), "alice", &key("", true)), []);
    assert_eq!(a.apply(t(0), "alice", &key(&"K".repeat(33), true)), []);
    assert_eq!(a.apply(t(0), "alice", &button(16, true)), []);
    assert_eq!(a.apply(t(0), "alice", &pad_button(16, 0, 1)), []);
    assert_eq!(a.apply(t(0), "alice", &pad_button(0, 32, 1)), []);
    assert_eq!(a.apply(t(0), "alice", &pad_axis(0, 16, 1)), []);
    assert_eq!(a.snapshot(), Snapshot::default());
    assert_eq!(a.holders(), 0);
}

// --- pointer, wheel --------------------------------------------------------

#[test]
fn relative_motion_and_wheel_pass_through() {
    let mut a = agg();
    assert_eq!(
        a.apply(t(0), "alice", &InputEvent::MouseMove { dx: 5, dy: -3 }),
        [SourceEvent::MouseMove { dx: 5, dy: -3 }]
    );
    assert_eq!(
        a.apply(
            t(0),
            "bob",
            &InputEvent::MouseMove {
                dx: i16::MIN,
                dy: i16::MAX
            }
        ),
        [SourceEvent::MouseMove {
            dx: -32768,
            dy: 32767
        }]
    );
    assert_eq!(
        a.apply(t(0), "bob", &InputEvent::Wheel { dx: 0, dy: -120 }),
        [SourceEvent::Wheel { dx: 0, dy: -120 }]
    );
    // Neither is state.
    assert_eq!(a.snapshot(), Snapshot::default());
    assert_eq!(a.holders(), 0);
}

#[test]
fn absolute_position_is_last_writer_wins() {
    let mut a = agg();
    assert_eq!(a.snapshot().cursor, None);
    assert_eq!(
        a.apply(t(0), "alice", &InputEvent::MouseAbs { x: 100, y: 200 }),
        [SourceEvent::MouseAbs { x: 100, y: 200 }]
    );
    a.apply(t(1), "bob", &InputEvent::MouseAbs { x: 65535, y: 0 });
    assert_eq!(a.snapshot().cursor, Some((65535, 0)));
    // Relative motion does not move the drawn cursor; leaving does not hide it.
    a.apply(t(2), "alice", &InputEvent::MouseMove { dx: 10, dy: 10 });
    assert_eq!(a.release(t(3), "bob"), []);
    assert_eq!(a.snapshot().cursor, Some((65535, 0)));
}

// --- touch -----------------------------------------------------------------

#[test]
fn touch_ids_of_different_viewers_do_not_collide() {
    let mut a = agg();
    use TouchPhase::*;
    assert_eq!(
        a.apply(t(0), "alice", &touch(0, Start, 10, 10)),
        [touch_out(0, Start, 10, 10)]
    );
    assert_eq!(
        a.apply(t(0), "bob", &touch(0, Start, 20, 20)),
        [touch_out(1, Start, 20, 20)]
    );
    assert_eq!(
        a.apply(t(1), "bob", &touch(0, Move, 21, 22)),
        [touch_out(1, Move, 21, 22)]
    );
    assert_eq!(
        a.apply(t(1), "alice", &touch(0, Move, 11, 12)),
        [touch_out(0, Move, 11, 12)]
    );
    let snap = a.snapshot();
    assert_eq!(
        snap.touches,
        [
            TouchState {
                id: 0,
                owner: "alice".into(),
                x: 11,
                y: 12
            },
            TouchState {
                id: 1,
                owner: "bob".into(),
                x: 21,
                y: 22
            },
        ]
    );
    assert_eq!(
        a.apply(t(2), "alice", &touch(0, End, 11, 12)),
        [touch_out(0, End, 11, 12)]
    );
    assert_eq!(
        a.apply(t(2), "bob", &touch(0, Cancel, 0, 0)),
        [touch_out(1, Cancel, 0, 0)]
    );
    assert!(a.snapshot().touches.is_empty());
    assert_eq!(a.holders(), 0);
}

#[test]
fn freed_global_touch_ids_are_reused_lowest_first() {
    let mut a = agg();
    use TouchPhase::*;
    a.apply(t(0), "alice", &touch(5, Start, 0, 0));
    a.apply(t(0), "alice", &touch(6, Start, 0, 0));
    a.apply(t(0), "alice", &touch(5, End, 0, 0));
    assert_eq!(
        a.apply(t(1), "bob", &touch(9, Start, 1, 1)),
        [touch_out(0, Start, 1, 1)]
    );
}

#[test]
fn touch_motion_or_end_without_start_is_ignored() {
    let mut a = agg();
    use TouchPhase::*;
    assert_eq!(a.apply(t(0), "alice", &touch(3, Move, 1, 1)), []);
    assert_eq!(a.apply(t(0), "alice", &touch(3, End, 1, 1)), []);
    assert_eq!(a.apply(t(0), "alice", &touch(3, Cancel, 1, 1)), []);
    a.apply(t(0), "bob", &touch(3, Start, 1, 1));
    // Alice's touch 3 is not Bob's.
    assert_eq!(a.apply(t(1), "alice", &touch(3, End, 1, 1)), []);
    assert_eq!(a.snapshot().touches.len(), 1);
}

#[test]
fn a_restarted_touch_ends_the_old_one_first() {
    let mut a = agg();
    use TouchPhase::*;
    a.apply(t(0), "alice", &touch(1, Start, 5, 5));
    a.apply(t(0), "alice", &touch(1, Move, 6, 6));
    assert_eq!(
        a.apply(t(1), "alice", &touch(1, Start, 50, 50)),
        [touch_out(0, End, 6, 6), touch_out(0, Start, 50, 50)]
    );
    assert_eq!(a.snapshot().touches[0].x, 50);
}

#[test]
fn touch_limits() {
    let mut a = Aggregator::new(Limits {
        max_touches_per_viewer: 2,
        max_touches: 3,
        ..Limits::default()
    });
    use TouchPhase::*;
    assert_eq!(a.apply(t(0), "alice", &touch(0, Start, 0, 0)).len(), 1);
    assert_eq!(a.apply(t(0), "alice", &touch(1, Start, 0, 0)).len(), 1);
    assert_eq!(a.apply(t(0), "alice", &touch(2, Start, 0, 0)), []);
    // The dropped touch's motion and end are dropped too.
    assert_eq!(a.apply(t(0), "alice", &touch(2, Move, 1, 1)), []);
    assert_eq!(a.apply(t(0), "alice", &touch(2, End, 1, 1)), []);
    assert_eq!(
        a.apply(t(0), "bob", &touch(0, Start, 0, 0)),
        [touch_out(2, Start, 0, 0)]
    );
    // No global id left.
    assert_eq!(a.apply(t(0), "bob", &touch(1, Start, 0, 0)), []);
    assert_eq!(a.apply(t(0), "carol", &touch(0, Start, 0, 0)), []);
    assert_eq!(a.holders(), 2);
}

// --- gamepads --------------------------------------------------------------

#[test]
fn pads_get_slots_on_first_use() {
    let mut a = agg();
    assert_eq!(
        a.apply(t(0), "alice", &presence(0, true)),
        [SourceEvent::PadConnected { slot: 0 }]
    );
    // Connecting again is idempotent.
    assert_eq!(a.apply(t(0), "alice", &presence(0, true)), []);
    // Any pad event assigns a slot.
    assert_eq!(
        a.apply(t(1), "bob", &pad_button(0, 3, 255)),
        [
            SourceEvent::PadConnected { slot: 1 },
            SourceEvent::PadButton {
                slot: 1,
                button: 3,
                value: 255
            }
        ]
    );
    assert_eq!(
        a.apply(t(1), "alice", &pad_axis(2, 1, -500)),
        [
            SourceEvent::PadConnected { slot: 2 },
            SourceEvent::PadAxis {
                slot: 2,
                axis: 1,
                value: -500
            }
        ]
    );
    assert_eq!(
        a.apply(t(2), "alice", &pad_button(0, 0, 128)),
        [SourceEvent::PadButton {
            slot: 0,
            button: 0,
            value: 128
        }]
    );
    let pads = a.snapshot().pads;
    assert_eq!(
        pads,
        [
            PadState {
                slot: 0,
                owner: "alice".into(),
                pad: 0,
                buttons: vec![(0, 128)],
                axes: vec![]
            },
            PadState {
                slot: 1,
                owner: "bob".into(),
                pad: 0,
                buttons: vec![(3, 255)],
                axes: vec![]
            },
            PadState {
                slot: 2,
                owner: "alice".into(),
                pad: 2,
                buttons: vec![],
                axes: vec![(1, -500)]
            },
        ]
    );
}

#[test]
fn pad_values_back_at_rest_leave_the_snapshot() {
    let mut a = agg();
    a.apply(t(0), "alice", &pad_button(0, 1, 255));
    a.apply(t(0), "alice", &pad_axis(0, 0, 7));
    a.apply(t(1), "alice", &pad_button(0, 1, 0));
    a.apply(t(1), "alice", &pad_axis(0, 0, 0));
    let pads = a.snapshot().pads;
    assert_eq!(pads.len(), 1, "the pad stays connected");
    assert!(pads[0].buttons.is_empty() && pads[0].axes.is_empty());
}

#[test]
fn slot_exhaustion_drops_the_extra_pads() {
    let mut a = Aggregator::new(Limits {
        max_pads: 2,
        ..Limits::default()
    });
    a.apply(t(0), "alice", &presence(0, true));
    a.apply(t(0), "bob", &presence(0, true));
    assert_eq!(a.apply(t(0), "carol", &presence(0, true)), []);
    assert_eq!(a.apply(t(0), "carol", &pad_button(0, 0, 255)), []);
    assert_eq!(a.apply(t(0), "alice", &pad_axis(1, 0, 100)), []);
    assert_eq!(a.holders(), 2, "carol holds nothing");
    // Bob unplugs: carol's next event gets his slot.
    assert_eq!(
        a.apply(t(1), "bob", &presence(0, false)),
        [SourceEvent::PadDisconnected { slot: 1 }]
    );
    assert_eq!(
        a.apply(t(2), "carol", &pad_button(0, 0, 255)),
        [
            SourceEvent::PadConnected { slot: 1 },
            SourceEvent::PadButton {
                slot: 1,
                button: 0,
                value: 255
            }
        ]
    );
}

#[test]
fn unplugging_a_pad_brings_it_to_rest_first() {
    let mut a = agg();
    a.apply(t(0), "alice", &pad_button(1, 4, 255));
    a.apply(t(0), "alice", &pad_button(1, 2, 30));
    a.apply(t(0), "alice", &pad_axis(1, 3, -32768));
    a.apply(t(0), "alice", &pad_axis(1, 0, 0));
    assert_eq!(
        a.apply(t(1), "alice", &presence(1, false)),
        [
            SourceEvent::PadButton {
                slot: 0,
                button: 2,
                value: 0
            },
            SourceEvent::PadButton {
                slot: 0,
                button: 4,
                value: 0
            },
            SourceEvent::PadAxis {
                slot: 0,
                axis: 3,
                value: 0
            },
            SourceEvent::PadDisconnected { slot: 0 },
        ]
    );
    assert!(a.snapshot().pads.is_empty());
    assert_eq!(a.holders(), 0);
    // Unplugging a pad that has no slot does nothing (and takes none).
    assert_eq!(a.apply(t(2), "alice", &presence(1, false)), []);
    assert_eq!(a.apply(t(2), "bob", &presence(0, false)), []);
    assert!(a.snapshot().pads.is_empty());
}

#[test]
fn no_pad_slots_at_all() {
    let mut a = Aggregator::new(Limits {
        max_pads: 0,
        ..Limits::default()
    });
    assert_eq!(a.apply(t(0), "alice", &presence(0, true)), []);
    assert_eq!(a.holders(), 0);
}

// --- release and expiry ----------------------------------------------------

#[test]
fn release_lets_go_of_everything_the_viewer_held() {
    let mut a = agg();
    use TouchPhase::*;
    a.apply(t(0), "alice", &key("KeyA", true));
    a.apply(t(0), "alice", &key("KeyB", true));
    a.apply(t(0), "alice", &button(0, true));
    a.apply(t(0), "alice", &button(1, true));
    a.apply(t(0), "alice", &touch(4, Start, 7, 8));
    a.apply(t(0), "alice", &touch(4, Move, 9, 10));
    a.apply(t(0), "alice", &pad_button(0, 1, 255));
    a.apply(t(0), "alice", &presence(3, true));
    // Bob also holds KeyB and button 1.
    a.apply(t(0), "bob", &key("KeyB", true));
    a.apply(t(0), "bob", &button(1, true));

    assert_eq!(
        a.release(t(1), "alice"),
        [
            key_out("KeyA", false),
            SourceEvent::MouseButton {
                button: 0,
                down: false
            },
            touch_out(0, End, 9, 10),
            SourceEvent::PadButton {
                slot: 0,
                button: 1,
                value: 0
            },
            SourceEvent::PadDisconnected { slot: 0 },
            SourceEvent::PadDisconnected { slot: 1 },
        ]
    );
    let snap = a.snapshot();
    assert_eq!(snap.keys_down, ["KeyB"]);
    assert_eq!(snap.buttons_down, [1]);
    assert!(snap.touches.is_empty() && snap.pads.is_empty());
    // Twice is harmless.
    assert_eq!(a.release(t(2), "alice"), []);
    assert_eq!(
        a.release(t(3), "bob"),
        [
            key_out("KeyB", false),
            SourceEvent::MouseButton {
                button: 1,
                down: false
            }
        ]
    );
    assert_eq!(a.holders(), 0);
}

#[test]
fn release_of_an_unknown_viewer_is_empty() {
    let mut a = agg();
    assert_eq!(a.release(t(0), "nobody"), []);
    a.apply(t(0), "alice", &InputEvent::Ping);
    a.apply(t(0), "alice", &InputEvent::MouseMove { dx: 1, dy: 1 });
    assert_eq!(a.release(t(0), "alice"), []);
}

#[test]
fn a_released_viewer_may_come_back() {
    let mut a = agg();
    a.apply(t(0), "alice", &key("KeyA", true));
    a.release(t(1), "alice");
    assert_eq!(
        a.apply(t(2), "alice", &key("KeyA", false)),
        [],
        "its stale up is stray"
    );
    assert_eq!(
        a.apply(t(3), "alice", &key("KeyA", true)),
        [key_out("KeyA", true)]
    );
}

#[test]
fn backend_is_one_more_viewer() {
    let mut a = agg();
    a.apply(t(0), BACKEND, &key("KeyA", true));
    assert_eq!(a.apply(t(0), "alice", &key("KeyA", true)), []);
    assert_eq!(a.release(t(1), "alice"), []);
    assert_eq!(a.release(t(1), BACKEND), [key_out("KeyA", false)]);
}

#[test]
fn expire_releases_silent_holders_only() {
    let mut a = agg();
    let idle = Duration::from_secs(5);
    a.apply(t(0), "alice", &key("KeyA", true));
    a.apply(t(0), "bob", &key("KeyB", true));
    // Carol is silent but holds nothing: nothing to release.
    a.apply(t(0), "carol", &InputEvent::Ping);
    // Bob keeps pinging; Alice says nothing.
    a.apply(t(3_000), "bob", &InputEvent::Ping);
    assert_eq!(
        a.expire(t(5_000), idle),
        [],
        "exactly `idle` is not longer than it"
    );
    assert_eq!(a.expire(t(5_001), idle), [key_out("KeyA", false)]);
    assert_eq!(a.snapshot().keys_down, ["KeyB"]);
    assert_eq!(a.expire(t(8_000), idle), []);
    // Any event counts as activity, not just pings.
    a.apply(t(8_000), "bob", &InputEvent::MouseMove { dx: 1, dy: 0 });
    assert_eq!(a.expire(t(13_000), idle), []);
    assert_eq!(a.expire(t(13_001), idle), [key_out("KeyB", false)]);
    assert_eq!(a.holders(), 0);
}

#[test]
fn expire_in_viewer_order_and_keeps_shared_keys_until_the_last() {
    let mut a = agg();
    let idle = Duration::from_millis(100);
    a.apply(t(0), "zed", &button(0, true));
    a.apply(t(0), "amy", &button(0, true));
    a.apply(t(0), "amy", &key("KeyQ", true));
    a.apply(t(50), "mia", &button(0, true));
    assert_eq!(a.expire(t(101), idle), [key_out("KeyQ", false)]);
    assert_eq!(
        a.expire(t(151), idle),
        [SourceEvent::MouseButton {
            button: 0,
            down: false
        }]
    );
}

#[test]
fn a_dropped_event_still_counts_as_activity() {
    let mut a = Aggregator::new(Limits {
        max_keys_per_viewer: 1,
        ..Limits::default()
    });
    let idle = Duration::from_secs(1);
    a.apply(t(0), "alice", &key("KeyA", true));
    a.apply(t(900), "alice", &key("KeyB", true));
    a.apply(t(900), "alice", &key("Bad Code", true));
    assert_eq!(a.expire(t(1_500), idle), []);
}

#[test]
fn time_going_backwards_does_not_expire_anyone() {
    let mut a = agg();
    a.apply(t(1_000), "alice", &key("KeyA", true));
    a.apply(t(500), "alice", &InputEvent::Ping);
    assert_eq!(a.expire(t(0), Duration::ZERO), []);
    assert_eq!(a.expire(t(1_000), Duration::ZERO), []);
    assert_eq!(a.expire(t(1_001), Duration::ZERO).len(), 1);
}

// --- property: no stuck input ---------------------------------------------

/// A pad's non-zero buttons and axes.
type PadValues = (BTreeMap<u8, u8>, BTreeMap<u8, i16>);

/// What the source believes, built only from the outputs. Every output must
/// make sense to it: no down while down, no up while up, no touch or pad
/// event on an id or slot that is not live, no disconnect of a pad that is
/// not at rest.
#[derive(Debug, Default)]
struct Source {
    keys: BTreeSet<String>,
    buttons: BTreeSet<u8>,
    touches: BTreeMap<u8, (u16, u16)>,
    pads: BTreeMap<u8, PadValues>,
    downs: usize,
    ups: usize,
}

impl Source {
    fn feed(&mut self, out: &[SourceEvent], limits: &Limits) -> Result<(), TestCaseError> {
        for o in out {
            match o {
                SourceEvent::Key { code, down: true } => {
                    prop_assert!(self.keys.insert(code.clone()), "double down {code}");
                    self.downs += 1;
                }
                SourceEvent::Key { code, down: false } => {
                    prop_assert!(self.keys.remove(code), "up of {code} which is up");
                    self.ups += 1;
                }
                SourceEvent::MouseButton { button, down: true } => {
                    prop_assert!(self.buttons.insert(*button), "double down {button}");
                    self.downs += 1;
                }
                SourceEvent::MouseButton {
                    button,
                    down: false,
                } => {
                    prop_assert!(self.buttons.remove(button), "up of {button} which is up");
                    self.ups += 1;
                }
                SourceEvent::Touch { id, phase, x, y } => {
                    prop_assert!(*id < limits.max_touches);
                    match phase {
                        TouchPhase::Start => {
                            prop_assert!(
                                self.touches.insert(*id, (*x, *y)).is_none(),
                                "touch {id} started twice"
                            );
                            self.downs += 1;
                        }
                        TouchPhase::Move => {
                            prop_assert!(
                                self.touches.insert(*id, (*x, *y)).is_some(),
                                "touch {id} moves unstarted"
                            );
                        }
                        TouchPhase::End | TouchPhase::Cancel => {
                            prop_assert!(
                                self.touches.remove(id).is_some(),
                                "touch {id} ends unstarted"
                            );
                            self.ups += 1;
                        }
                    }
                }
                SourceEvent::PadConnected { slot } => {
                    prop_assert!(*slot < limits.max_pads);
                    prop_assert!(
                        self.pads.insert(*slot, Default::default()).is_none(),
                        "slot {slot} connected twice"
                    );
                }
                SourceEvent::PadDisconnected { slot } => {
                    let pad = self.pads.remove(slot);
                    prop_assert!(pad.is_some(), "slot {slot} disconnected while free");
                    let (b, a) = pad.unwrap_or_default();
                    prop_assert!(
                        b.is_empty() && a.is_empty(),
                        "slot {slot} disconnected while not at rest"
                    );
                }
                SourceEvent::PadButton {
                    slot,
                    button,
                    value,
                } => {
                    let pad = self.pads.get_mut(slot);
                    prop_assert!(pad.is_some(), "button on free slot {slot}");
                    if let Some((b, _)) = pad {
                        set_or_clear(b, *button, *value, 0);
                    }
                }
                SourceEvent::PadAxis { slot, axis, value } => {
                    let pad = self.pads.get_mut(slot);
                    prop_assert!(pad.is_some(), "axis on free slot {slot}");
                    if let Some((_, a)) = pad {
                        set_or_clear(a, *axis, *value, 0);
                    }
                }
                SourceEvent::MouseMove { .. }
                | SourceEvent::MouseAbs { .. }
                | SourceEvent::Wheel { .. } => {}
                SourceEvent::Unknown => prop_assert!(false, "the aggregator made an unknown event"),
            }
        }
        Ok(())
    }

    /// The aggregator's snapshot says what the source believes.
    fn agrees_with(&self, snap: &Snapshot) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            &snap.keys_down,
            &self.keys.iter().cloned().collect::<Vec<_>>()
        );
        prop_assert_eq!(
            &snap.buttons_down,
            &self.buttons.iter().copied().collect::<Vec<_>>()
        );
        let touches: Vec<_> = snap.touches.iter().map(|t| (t.id, (t.x, t.y))).collect();
        prop_assert_eq!(
            touches,
            self.touches.clone().into_iter().collect::<Vec<_>>()
        );
        let pads: Vec<_> = snap
            .pads
            .iter()
            .map(|p| {
                (
                    p.slot,
                    (
                        p.buttons.iter().copied().collect(),
                        p.axes.iter().copied().collect(),
                    ),
                )
            })
            .collect();
        prop_assert_eq!(pads, self.pads.clone().into_iter().collect::<Vec<_>>());
        Ok(())
    }

    fn is_at_rest(&self) -> bool {
        self.keys.is_empty()
            && self.buttons.is_empty()
            && self.touches.is_empty()
            && self.pads.is_empty()
    }
}

#[derive(Debug, Clone)]
enum Step {
    Event(usize, InputEvent),
    Release(usize),
    Expire(u64),
    Wait(u64),
}

const VIEWERS: [&str; 5] = ["alice", "bob", "carol", "dave", BACKEND];

fn small_event() -> impl Strategy<Value = InputEvent> {
    let phase = prop_oneof![
        Just(TouchPhase::Start),
        Just(TouchPhase::Move),
        Just(TouchPhase::End),
        Just(TouchPhase::Cancel),
    ];
    prop_oneof![
        4 => (prop::sample::select(vec!["KeyA", "KeyB", "ShiftLeft", "F12", "Bad-Key"]), any::<bool>())
            .prop_map(|(c, down)| key(c, down)),
        2 => (0u8..4, any::<bool>()).prop_map(|(b, down)| button(b, down)),
        1 => (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| InputEvent::MouseMove { dx, dy }),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(x, y)| InputEvent::MouseAbs { x, y }),
        1 => (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| InputEvent::Wheel { dx, dy }),
        3 => (0u8..4, phase, 0u16..100, 0u16..100).prop_map(|(id, p, x, y)| touch(id, p, x, y)),
        2 => (0u8..3, 0u8..3, prop_oneof![Just(0u8), Just(255u8), any::<u8>()])
            .prop_map(|(p, b, v)| pad_button(p, b, v)),
        2 => (0u8..3, 0u8..3, prop_oneof![Just(0i16), any::<i16>()]).prop_map(|(p, a, v)| pad_axis(p, a, v)),
        2 => (0u8..3, any::<bool>()).prop_map(|(p, c)| presence(p, c)),
        1 => Just(InputEvent::Ping),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => (0..VIEWERS.len(), small_event()).prop_map(|(v, e)| Step::Event(v, e)),
        1 => (0..VIEWERS.len()).prop_map(Step::Release),
        1 => (0u64..300).prop_map(Step::Expire),
        2 => (0u64..200).prop_map(Step::Wait),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (0u8..4, 1usize..4, 1usize..3, 0u8..5, 1usize..5).prop_map(
        |(max_pads, max_keys_per_viewer, max_touches_per_viewer, max_touches, max_viewers)| {
            Limits {
                max_pads,
                max_keys_per_viewer,
                max_touches_per_viewer,
                max_touches,
                max_viewers,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn prop_nothing_stays_stuck(
        limits in prop_oneof![Just(Limits::default()), limits()],
        steps in prop::collection::vec(step(), 0..200),
    ) {
        let mut a = Aggregator::new(limits.clone());
        let mut source = Source::default();
        let mut now = 0u64;
        for s in steps {
            let out = match s {
                Step::Event(v, e) => a.apply(t(now), VIEWERS[v], &e),
                Step::Release(v) => a.release(t(now), VIEWERS[v]),
                Step::Expire(idle) => a.expire(t(now), Duration::from_millis(idle)),
                Step::Wait(ms) => {
                    now += ms;
                    Vec::new()
                }
            };
            source.feed(&out, &limits)?;
            source.agrees_with(&a.snapshot())?;
            prop_assert!(a.holders() <= limits.max_viewers);
            // Bounded: only holders are tracked, each within its caps.
            for v in a.viewers.values() {
                prop_assert!(!v.holds_nothing());
                prop_assert!(v.keys.len() <= limits.max_keys_per_viewer);
                prop_assert!(v.touches.len() <= limits.max_touches_per_viewer);
            }
        }
        for v in VIEWERS {
            let out = a.release(t(now), v);
            source.feed(&out, &limits)?;
        }
        prop_assert!(source.is_at_rest(), "stuck at the source: {:?}", source);
        prop_assert_eq!(source.downs, source.ups, "every down has its up");
        let snap = a.snapshot();
        prop_assert!(snap.keys_down.is_empty() && snap.buttons_down.is_empty());
        prop_assert!(snap.touches.is_empty() && snap.pads.is_empty());
        prop_assert_eq!(a.holders(), 0);
        prop_assert!(a.keys.is_empty());
        prop_assert!(a.buttons.iter().all(|&c| c == 0));
    }

    #[test]
    fn prop_expiring_everyone_is_a_full_release(steps in prop::collection::vec(step(), 0..100)) {
        let limits = Limits::default();
        let mut a = Aggregator::new(limits.clone());
        let mut source = Source::default();
        let mut now = 0u64;
        for s in steps {
            let out = match s {
                Step::Event(v, e) => a.apply(t(now), VIEWERS[v], &e),
                Step::Release(v) => a.release(t(now), VIEWERS[v]),
                Step::Expire(idle) => a.expire(t(now), Duration::from_millis(idle)),
                Step::Wait(ms) => {
                    now += ms;
                    Vec::new()
                }
            };
            source.feed(&out, &limits)?;
        }
        let out = a.expire(t(now + 1), Duration::ZERO);
        source.feed(&out, &limits)?;
        prop_assert!(source.is_at_rest(), "stuck at the source: {:?}", source);
        prop_assert_eq!(a.holders(), 0);
    }
}
