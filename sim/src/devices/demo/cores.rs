//! `demo.cores`: periodic timer tasks on simulated cores.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use firmware_core::time::{Duration, Instant};
use rand::Rng;
use serde::Deserialize;

use crate::devices::{Device, DeviceSpec, StateValue, from_table, serde_duration};
use crate::kernel::{Kernel, TaskSpec};

/// `kind = "demo.cores"`: periodic timer tasks pinned to named cores with priorities.
///
/// Each task wakes every `period`, records how late it ran (`<device>.<task>.latency_us` when
/// `samples = true`) and then burns `cost` of CPU time on its core.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoresSpec {
    /// Core names.
    cores: Vec<String>,
    /// The tasks.
    #[serde(rename = "task", default)]
    tasks: Vec<TimerTask>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimerTask {
    name: String,
    core: String,
    #[serde(default)]
    priority: u8,
    #[serde(with = "serde_duration")]
    period: Duration,
    #[serde(with = "serde_duration")]
    cost: Duration,
    #[serde(default)]
    samples: bool,
    /// Each activation comes up to this much late, drawn from the seeded stream
    /// `<device>.<task>` (an interrupt-driven task, say).
    #[serde(default, with = "serde_duration_opt")]
    jitter: Option<Duration>,
}

mod serde_duration_opt {
    use firmware_core::time::Duration;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::serde_duration::deserialize(d).map(Some)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCost {
    task: String,
    #[serde(with = "serde_duration")]
    cost: Duration,
}

impl CoresSpec {
    /// Parse and check a `demo.cores` table.
    pub fn parse(table: &toml::Table) -> Result<Self, String> {
        let spec: CoresSpec = from_table(table)?;
        for t in &spec.tasks {
            if !spec.cores.contains(&t.core) {
                return Err(format!(
                    "task `{}` is on core `{}`, which is not in cores = {:?}",
                    t.name, t.core, spec.cores
                ));
            }
            if t.period == Duration::ZERO {
                return Err(format!("task `{}`: period must be above zero", t.name));
            }
        }
        Ok(spec)
    }

    fn task(&self, name: &str) -> Result<&TimerTask, String> {
        self.tasks.iter().find(|t| t.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
            format!("no task `{name}` (tasks: {})", names.join(", "))
        })
    }
}

#[derive(Default)]
struct Counters {
    runs: Cell<u64>,
    max_latency: Cell<Duration>,
    cost: Cell<Duration>,
}

impl DeviceSpec for CoresSpec {
    fn check_action(&self, verb: &str, params: &toml::Table) -> Result<(), String> {
        match verb {
            "set_cost" => {
                let a: SetCost = from_table(params)?;
                self.task(&a.task).map(|_| ())
            }
            other => Err(format!(
                "demo.cores has no action `{other}` (actions: set_cost)"
            )),
        }
    }

    fn check_state(&self, key: &str) -> Result<(), String> {
        let (task, field) = key.split_once('.').ok_or_else(|| {
            format!("state `{key}`: expected `<task>.runs` or `<task>.max_latency_us`")
        })?;
        self.task(task)?;
        match field {
            "runs" | "max_latency_us" => Ok(()),
            other => Err(format!("no state `{other}` (states: runs, max_latency_us)")),
        }
    }

    fn build(&self, name: &str, kernel: &mut Kernel) -> Box<dyn Device> {
        let cores: BTreeMap<&str, _> = self
            .cores
            .iter()
            .map(|c| (c.as_str(), kernel.add_core(format!("{name}.{c}"))))
            .collect();
        let mut counters = BTreeMap::new();
        for t in &self.tasks {
            let c = Rc::new(Counters::default());
            c.cost.set(t.cost);
            counters.insert(t.name.clone(), c.clone());
            let clock = kernel.clock();
            let tracer = kernel.tracer();
            let metric = format!("{name}.{}.latency_us", t.name);
            let period = t.period;
            let samples = t.samples;
            let core = cores[t.core.as_str()];
            let jitter = t.jitter.unwrap_or(Duration::ZERO).as_micros();
            let mut rng = kernel.rng(&format!("{name}.{}", t.name));
            kernel
                .spawn(
                    TaskSpec::on_core(
                        format!("{name}.{}", t.name),
                        core,
                        t.priority,
                        Duration::ZERO,
                    ),
                    async move {
                        let mut due = Instant::ZERO;
                        loop {
                            due += period;
                            let offset = if jitter > 0 {
                                Duration::from_micros(rng.random_range(0..=jitter))
                            } else {
                                Duration::ZERO
                            };
                            clock.sleep_until(due + offset).await;
                            let late = clock.now() - due;
                            c.runs.set(c.runs.get() + 1);
                            c.max_latency.set(c.max_latency.get().max(late));
                            if samples {
                                tracer.sample(&metric, late.as_micros() as f64);
                            }
                            clock.charge(c.cost.get());
                        }
                    },
                )
                .detach();
        }
        Box::new(Cores { counters })
    }
}

struct Cores {
    counters: BTreeMap<String, Rc<Counters>>,
}

impl Device for Cores {
    fn act(&mut self, verb: &str, params: &toml::Table) -> Result<(), String> {
        match verb {
            "set_cost" => {
                let a: SetCost = from_table(params)?;
                let c = self
                    .counters
                    .get(&a.task)
                    .ok_or_else(|| format!("no task `{}`", a.task))?;
                c.cost.set(a.cost);
                Ok(())
            }
            other => Err(format!("no action `{other}`")),
        }
    }

    fn state(&self, key: &str) -> Option<StateValue> {
        let (task, field) = key.split_once('.')?;
        let c = self.counters.get(task)?;
        match field {
            "runs" => Some(StateValue::Int(c.runs.get() as i64)),
            "max_latency_us" => Some(StateValue::Int(c.max_latency.get().as_micros() as i64)),
            _ => None,
        }
    }
}
