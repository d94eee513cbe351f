//! RTO: how long restoring a cluster would take now, predicted from restores that were
//! measured, and whether an image layer would bring the prediction back under the target.
//!
//! A restore has phases (see the restore's report): planning and the first connection take
//! about the same time whatever the size (`fixed`); fetching the layers, writing the data
//! directory and its WAL, and replaying the WAL each take time that grows with their bytes. Each
//! of those three is fitted as `base + per_byte × bytes` over the measured restores
//! ([`model`]), and a prediction ([`predict`]) applies the fits to what a restore would need
//! now ([`Needs`]).
//!
//! Invariants:
//! - Pure: measurements, needs and targets are arguments; nothing reads a clock or a file.
//! - A fit never goes negative: when the measurements cannot separate a base from a rate (one
//!   restore, or restores of about the same size), the time is taken as proportional to the
//!   bytes; a fit whose base or slope would be negative falls back the same way. So a
//!   prediction grows with every need (tested).
//! - The part an image would remove ([`Prediction::wal_seconds`]) is only the per-byte time of
//!   the WAL a restore fetches, writes and replays; the bases stay, so a new image is never
//!   credited with more than it saves.

/// One measured restore: bytes and seconds of each phase.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Measured {
    pub fetch_bytes: u64,
    pub fetch_seconds: f64,
    /// Data files and WAL segments written.
    pub write_bytes: u64,
    pub write_seconds: f64,
    /// WAL from the image to the point.
    pub replay_bytes: u64,
    pub replay_seconds: f64,
    /// Planning and the first connection.
    pub fixed_seconds: f64,
}

/// The time of one phase: `base_seconds + seconds_per_byte × bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Phase {
    pub base_seconds: f64,
    pub seconds_per_byte: f64,
}

impl Phase {
    pub fn seconds(&self, bytes: u64) -> f64 {
        self.base_seconds + self.seconds_per_byte * bytes as f64
    }

    /// Least squares over `(bytes, seconds)`, or proportional when the points cannot separate
    /// a base from a rate (see the module's invariants).
    pub fn fit(points: &[(u64, f64)]) -> Phase {
        let points: Vec<(f64, f64)> = points
            .iter()
            .filter(|(_, s)| s.is_finite() && *s >= 0.0)
            .map(|(b, s)| (*b as f64, *s))
            .collect();
        if points.is_empty() {
            return Phase::default();
        }
        let n = points.len() as f64;
        let sum_x: f64 = points.iter().map(|p| p.0).sum();
        let sum_y: f64 = points.iter().map(|p| p.1).sum();
        let proportional = || {
            if sum_x > 0.0 {
                Phase {
                    base_seconds: 0.0,
                    seconds_per_byte: sum_y / sum_x,
                }
            } else {
                Phase {
                    base_seconds: sum_y / n,
                    seconds_per_byte: 0.0,
                }
            }
        };
        let min_x = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let max_x = points.iter().map(|p| p.0).fold(0.0, f64::max);
        // Sizes within a factor of two cannot tell a base from a rate.
        if points.len() < 2 || max_x < 2.0 * min_x.max(1.0) {
            return proportional();
        }
        let (mx, my) = (sum_x / n, sum_y / n);
        let var: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
        let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let slope = cov / var;
        let base = my - slope * mx;
        if !(slope.is_finite() && base.is_finite()) || slope < 0.0 || base < 0.0 {
            return proportional();
        }
        Phase {
            base_seconds: base,
            seconds_per_byte: slope,
        }
    }
}

/// The fitted phases of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Model {
    pub fetch: Phase,
    pub write: Phase,
    pub replay: Phase,
    pub fixed_seconds: f64,
    /// How many restores the fit is made of.
    pub restores: usize,
}

/// The model fitted to `measured`; `None` when nothing was measured.
pub fn model(measured: &[Measured]) -> Option<Model> {
    if measured.is_empty() {
        return None;
    }
    let fit = |f: &dyn Fn(&Measured) -> (u64, f64)| {
        Phase::fit(&measured.iter().map(f).collect::<Vec<_>>())
    };
    let fixed: Vec<f64> = measured
        .iter()
        .map(|m| m.fixed_seconds)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .collect();
    Some(Model {
        fetch: fit(&|m| (m.fetch_bytes, m.fetch_seconds)),
        write: fit(&|m| (m.write_bytes, m.write_seconds)),
        replay: fit(&|m| (m.replay_bytes, m.replay_seconds)),
        fixed_seconds: if fixed.is_empty() {
            0.0
        } else {
            fixed.iter().sum::<f64>() / fixed.len() as f64
        },
        restores: measured.len(),
    })
}

/// What a restore would need now, split by what an image would remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Needs {
    /// The image layer and the images it references.
    pub image_fetch_bytes: u64,
    /// The WAL layers from the image to the point.
    pub wal_fetch_bytes: u64,
    /// The data directory the image makes.
    pub image_write_bytes: u64,
    /// The WAL segments written for replay.
    pub wal_write_bytes: u64,
    /// WAL from the image to the point.
    pub replay_bytes: u64,
}

/// A predicted restore, by phase.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Prediction {
    pub seconds: f64,
    pub fixed_seconds: f64,
    pub fetch_seconds: f64,
    pub write_seconds: f64,
    pub replay_seconds: f64,
    /// The part that grows with the WAL since the image: what a new image would save.
    pub wal_seconds: f64,
}

pub fn predict(m: &Model, n: &Needs) -> Prediction {
    let fetch = m.fetch.seconds(n.image_fetch_bytes + n.wal_fetch_bytes);
    let write = m.write.seconds(n.image_write_bytes + n.wal_write_bytes);
    let replay = m.replay.seconds(n.replay_bytes);
    let wal = m.fetch.seconds_per_byte * n.wal_fetch_bytes as f64
        + m.write.seconds_per_byte * n.wal_write_bytes as f64
        + m.replay.seconds_per_byte * n.replay_bytes as f64;
    Prediction {
        seconds: m.fixed_seconds + fetch + write + replay,
        fixed_seconds: m.fixed_seconds,
        fetch_seconds: fetch,
        write_seconds: write,
        replay_seconds: replay,
        wal_seconds: wal,
    }
}

/// A prediction this close to the target (as a fraction of it) asks for an image.
pub const NEAR: f64 = 0.8;

/// An image is only worth taking when it removes at least this share of the prediction.
pub const MIN_GAIN: f64 = 0.2;

/// Whether an image layer should be taken now: the prediction approaches `rto_seconds` and an
/// image would remove a worthwhile part of it.
pub fn image_helps(p: &Prediction, rto_seconds: f64) -> bool {
    p.seconds >= NEAR * rto_seconds && p.wal_seconds >= MIN_GAIN * p.seconds
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn one_restore_gives_proportional_phases() {
        let m = model(&[Measured {
            fetch_bytes: 100,
            fetch_seconds: 2.0,
            write_bytes: 50,
            write_seconds: 1.0,
            replay_bytes: 0,
            replay_seconds: 0.5,
            fixed_seconds: 0.25,
        }])
        .unwrap();
        assert_eq!(m.fetch.base_seconds, 0.0);
        assert!(close(m.fetch.seconds_per_byte, 0.02));
        // No replay bytes: the replay time is a base, not a rate.
        assert_eq!(m.replay.seconds_per_byte, 0.0);
        assert!(close(m.replay.base_seconds, 0.5));
        let p = predict(
            &m,
            &Needs {
                image_fetch_bytes: 150,
                wal_fetch_bytes: 50,
                image_write_bytes: 100,
                wal_write_bytes: 0,
                replay_bytes: 1_000,
            },
        );
        assert!(close(p.seconds, 0.25 + 4.0 + 2.0 + 0.5), "{p:?}");
        assert!(close(p.wal_seconds, 1.0), "{p:?}");
        assert!(model(&[]).is_none());
    }

    #[test]
    fn restores_of_different_sizes_separate_base_and_rate() {
        let ph = Phase::fit(&[(0, 1.0), (1_000, 2.0), (3_000, 4.0)]);
        assert!(
            close(ph.base_seconds, 1.0) && close(ph.seconds_per_byte, 0.001),
            "{ph:?}"
        );
        // A negative base (faster per byte at small sizes) falls back to proportional.
        let ph = Phase::fit(&[(1_000, 0.1), (3_000, 2.0)]);
        assert_eq!(ph.base_seconds, 0.0);
        assert!(close(ph.seconds_per_byte, 2.1 / 4_000.0));
        // Sizes within a factor of two: proportional.
        let ph = Phase::fit(&[(1_000, 1.0), (1_500, 3.0)]);
        assert_eq!(ph.base_seconds, 0.0);
    }

    #[test]
    fn an_image_is_asked_for_only_near_the_target_and_when_it_saves_enough() {
        let p = |seconds, wal_seconds| Prediction {
            seconds,
            wal_seconds,
            ..Prediction::default()
        };
        assert!(image_helps(&p(9.0, 5.0), 10.0));
        assert!(!image_helps(&p(7.0, 5.0), 10.0), "not near yet");
        assert!(
            !image_helps(&p(20.0, 1.0), 10.0),
            "the WAL is not what is slow"
        );
    }

    proptest! {
        /// Model check: restores timed by a true linear model of each phase are fitted back,
        /// and the prediction of any need is the true model's within rounding.
        #[test]
        fn a_linear_truth_is_recovered(
            base in 0.0f64..5.0,
            per_mb in 0.001f64..1.0,
            sizes in proptest::collection::vec(1u64..10_000, 2..8),
            need in 0u64..100_000,
        ) {
            let sizes: Vec<u64> = sizes.into_iter().map(|s| s * 1_000_000).collect();
            let truth = |b: u64| base + per_mb * b as f64 / 1e6;
            let pts: Vec<(u64, f64)> = sizes.iter().map(|&b| (b, truth(b))).collect();
            let ph = Phase::fit(&pts);
            let min = *sizes.iter().min().unwrap();
            let max = *sizes.iter().max().unwrap();
            if max >= 2 * min {
                prop_assert!(close(ph.seconds(need * 1_000_000), truth(need * 1_000_000)),
                    "{ph:?} at {need} MB");
            } else {
                // Proportional: at the largest size measured, never below the truth.
                prop_assert!(ph.base_seconds == 0.0);
                prop_assert!(ph.seconds(max) >= truth(max) * (1.0 - 1e-9), "{ph:?}");
            }
        }

        /// Predictions grow with every need, and never go below the fixed part.
        #[test]
        fn predictions_grow_with_needs(
            ms in proptest::collection::vec(
                (0u64..1u64 << 32, 0.0f64..100.0, 0u64..1u64 << 32, 0.0f64..100.0,
                 0u64..1u64 << 32, 0.0f64..100.0, 0.0f64..10.0), 1..6),
            n in (0u64..1u64 << 34, 0u64..1u64 << 34, 0u64..1u64 << 34, 0u64..1u64 << 34, 0u64..1u64 << 34),
            which in 0usize..5,
            more in 1u64..1u64 << 30,
        ) {
            let ms: Vec<Measured> = ms.into_iter().map(|m| Measured {
                fetch_bytes: m.0, fetch_seconds: m.1, write_bytes: m.2, write_seconds: m.3,
                replay_bytes: m.4, replay_seconds: m.5, fixed_seconds: m.6,
            }).collect();
            let m = model(&ms).unwrap();
            for ph in [m.fetch, m.write, m.replay] {
                prop_assert!(ph.base_seconds >= 0.0 && ph.seconds_per_byte >= 0.0, "{ph:?}");
            }
            let a = Needs {
                image_fetch_bytes: n.0, wal_fetch_bytes: n.1, image_write_bytes: n.2,
                wal_write_bytes: n.3, replay_bytes: n.4,
            };
            let mut b = a;
            match which {
                0 => b.image_fetch_bytes += more,
                1 => b.wal_fetch_bytes += more,
                2 => b.image_write_bytes += more,
                3 => b.wal_write_bytes += more,
                _ => b.replay_bytes += more,
            }
            let (pa, pb) = (predict(&m, &a), predict(&m, &b));
            prop_assert!(pb.seconds >= pa.seconds);
            prop_assert!(pa.seconds >= pa.fixed_seconds);
            prop_assert!(pa.wal_seconds <= pa.seconds - pa.fixed_seconds + 1e-9);
        }
    }
}
