//! Realistic traffic for the credit-card example's single source (`bank.channel.logs`): the
//! request, response and tracking messages of each action on one topic, in arrival order.
//!
//! Process instances (applications) walk apply → review → issue → make → deliver → activate;
//! some are sent back from review to apply (a return) and some stop early. 80% of messages
//! arrive within 5 s of their event time, the rest up to 90% of the lateness bound late; a
//! share of actions lose one part, a share of parts arrive twice, and a share of actions come
//! from a test environment (dropped by the pipeline's filter). `<file>.truth.json` holds the
//! counts a correct run must report.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// xoshiro256** seeded through splitmix64: small, fast and the same on every machine.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub actions: u64,
    pub seed: u64,
    /// Actions per second of event time.
    pub rate: u64,
    /// The pipeline's lateness bound, ms; the slowest messages arrive within 90% of it.
    pub lateness_ms: i64,
    /// Event time of the first action, epoch ms.
    pub start_ms: i64,
    pub missing_share: f64,
    pub duplicate_share: f64,
    pub filtered_share: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            actions: 10_000,
            seed: 1,
            rate: 200,
            lateness_ms: 3_600_000,
            start_ms: 1_763_798_400_000, // 2025-11-22T08:00:00Z
            missing_share: 0.02,
            duplicate_share: 0.01,
            filtered_share: 0.01,
        }
    }
}

/// The counts a correct run over the generated file reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Truth {
    pub lines: u64,
    pub actions: u64,
    pub complete: u64,
    pub incomplete: u64,
    pub duplicates: u64,
    pub filtered: u64,
    pub instances: u64,
}

const STEPS: [&str; 6] = ["apply", "review", "issue", "make", "deliver", "activate"];
const PRODUCTS: [&str; 4] = ["classic", "gold", "platinum", "student"];
const CHANNELS: [&str; 4] = ["app", "web", "branch", "partner"];

struct Instance {
    application: String,
    product: &'static str,
    branch: String,
    channel: &'static str,
    step: usize,
    returned: bool,
    prod: bool,
}

/// Writes `actions` actions' messages to `out` in arrival order and returns the truth.
pub fn generate(options: &GenerateOptions, out: &mut impl Write) -> std::io::Result<Truth> {
    let mut rng = Rng::new(options.seed);
    let mut truth = Truth::default();
    // Actions to happen, by event time: (time, seq, instance index).
    let mut upcoming: BinaryHeap<Reverse<(i64, u64, usize)>> = BinaryHeap::new();
    // Messages waiting to arrive: (arrival time, seq, line).
    let mut arriving: BinaryHeap<Reverse<(i64, u64, String)>> = BinaryHeap::new();
    let mut instances: Vec<Instance> = Vec::new();
    let mut seq = 0u64;
    let gap_ms = (1000 / options.rate.max(1)).max(1) as i64;
    let instance_gap = gap_ms * 4; // about four actions per instance
    let mut next_instance_at = options.start_ms;
    let tail_max = (options.lateness_ms as f64 * 0.9) as i64;

    while truth.actions < options.actions {
        // Start instances up to the next action's time.
        let next_action = upcoming.peek().map_or(i64::MAX, |Reverse((t, _, _))| *t);
        if next_instance_at <= next_action {
            let id = instances.len();
            instances.push(Instance {
                application: format!("A{:x}-{id:08}", options.seed),
                product: PRODUCTS[rng.below(4) as usize],
                branch: format!("B{:03}", rng.below(60)),
                channel: CHANNELS[rng.below(4) as usize],
                step: 0,
                returned: false,
                prod: !rng.chance(options.filtered_share),
            });
            truth.instances += 1;
            seq += 1;
            upcoming.push(Reverse((next_instance_at, seq, id)));
            next_instance_at += instance_gap;
            continue;
        }
        let Some(Reverse((t, _, id))) = upcoming.pop() else {
            break;
        };

        // Deliver everything that arrives before this action's earliest message.
        while let Some(Reverse((arrival, _, _))) = arriving.peek() {
            if *arrival >= t - 1000 {
                break;
            }
            if let Some(Reverse((_, _, line))) = arriving.pop() {
                out.write_all(line.as_bytes())?;
                truth.lines += 1;
            }
        }

        let instance = &mut instances[id];
        let step = STEPS[instance.step];
        truth.actions += 1;
        let tn = format!("T{:x}-{:010}", options.seed, truth.actions);
        let status = if step == "apply" && rng.chance(0.03) {
            500
        } else {
            200
        };
        let decision = if step == "review" {
            if rng.chance(0.8) {
                "approved"
            } else {
                "returned"
            }
        } else {
            ""
        };
        let env = if instance.prod { "prod" } else { "uat" };
        let latency = 20 + rng.below(1480) as i64;
        let tracking_time = t - rng.below(800) as i64;
        let request = format!(
            r#"{{"logType":"REQ","traceId":"{tn}","ts":{t},"env":"{env}","http":{{"method":"POST","path":"/cc/{step}"}},"body":{{"applicationNo":"{}","product":"{}","branchCode":"{}"}}}}"#,
            instance.application, instance.product, instance.branch
        );
        let response = format!(
            r#"{{"logType":"RESP","traceId":"{tn}","ts":{},"env":"{env}","http":{{"status":{status}}},"body":{{"applicationNo":"{}","decision":"{decision}"}}}}"#,
            t + latency,
            instance.application
        );
        let tracking = format!(
            r#"{{"logType":"TRK","traceId":"{tn}","ts":{},"env":"{env}","channel":"{}","page":"cc-{step}","device":"d{}"}}"#,
            tracking_time,
            instance.channel,
            rng.below(100_000)
        );
        let mut parts = vec![
            (t, request),
            (t + latency, response),
            (tracking_time, tracking),
        ];
        let missing = rng.chance(options.missing_share);
        if missing {
            parts.remove(rng.below(3) as usize);
        }
        if instance.prod {
            if missing {
                truth.incomplete += 1
            } else {
                truth.complete += 1
            }
        }
        for (event_time, line) in parts {
            let delay = if rng.chance(0.8) {
                rng.below(5000) as i64
            } else {
                5000 + rng.below((tail_max - 5000).max(1) as u64) as i64
            };
            let copies = if rng.chance(options.duplicate_share) {
                2
            } else {
                1
            };
            for copy in 0..copies {
                let arrival = event_time + delay + copy * rng.below(60_000) as i64;
                seq += 1;
                arriving.push(Reverse((arrival, seq, format!("{line}\n"))));
            }
            if instance.prod {
                truth.duplicates += (copies - 1) as u64;
            } else {
                truth.filtered += copies as u64;
            }
        }

        // What the applicant does next.
        let next = match step {
            "review" if decision == "returned" && !instance.returned => {
                instance.returned = true;
                Some(0)
            }
            "review" if decision == "returned" => None,
            _ if status != 200 => None,
            _ if rng.chance(0.05) => None, // abandoned
            _ => Some(instance.step + 1).filter(|s| *s < STEPS.len()),
        };
        if let Some(next_step) = next {
            instance.step = next_step;
            seq += 1;
            upcoming.push(Reverse((
                t + 30_000 + rng.below(20 * 60_000) as i64,
                seq,
                id,
            )));
        }
    }
    while let Some(Reverse((_, _, line))) = arriving.pop() {
        out.write_all(line.as_bytes())?;
        truth.lines += 1;
    }
    Ok(truth)
}

/// Generates into `path` and writes `<path>.truth.json` beside it.
pub fn generate_file(options: &GenerateOptions, path: &Path) -> std::io::Result<Truth> {
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let truth = generate(options, &mut out)?;
    out.flush()?;
    let truth_path = truth_path(path);
    std::fs::write(
        truth_path,
        serde_json::to_vec_pretty(&truth).map_err(std::io::Error::other)?,
    )?;
    Ok(truth)
}

pub fn truth_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".truth.json");
    name.into()
}
