//! Live mode: the twins on the wall clock, with real services on loopback.
//!
//! The kernel keeps running on the calling thread, paced by [`Kernel::go_live`]. Sockets live on
//! a small multi-thread tokio runtime on background threads ([`LiveContext::io`]); they talk to
//! the simulated devices through thread-safe channels, whose wakes reach the kernel's thread.
//! Each twin implements [`LiveTwin`]: it builds its device on the kernel, binds its services and
//! announces their addresses. Once every twin has started, the addresses are printed and written
//! to the `--ready-file` as one JSON object. Ctrl-C (or `quit` on stdin) stops the kernel and
//! gives every twin a chance to flush its state ([`LiveHandle::shutdown`]).
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use firmware_core::time::{Duration, Instant};

use crate::devices::Device;
use crate::kernel::{Kernel, LiveControl, RunEnd, TaskSpec};

pub mod control;
pub mod fleet;
pub mod guard;
pub mod pty;

pub use control::Controller;

/// What `twin run` was asked for.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Address every service binds to.
    pub bind: IpAddr,
    /// Added to every default port, so several twins can run side by side.
    pub port_offset: u16,
    /// Bind every service to port 0 (tests); the ready file tells the real ports.
    pub ephemeral_ports: bool,
    /// Where to write the services' addresses once all are listening.
    pub ready_file: Option<PathBuf>,
    /// Where devices keep state between runs (EEPROM images).
    pub state_dir: Option<PathBuf>,
    /// Virtual seconds per wall second.
    pub speed: f64,
    /// Seed for every random choice.
    pub seed: u64,
    /// An external MQTT broker (`mqtt://host:port`) instead of the embedded one.
    pub broker: Option<String>,
    /// The pump controller's architecture option.
    pub arch: Option<String>,
    /// `--mqtt-auth USER:PASS`: the embedded broker requires these, and the pump twin logs in
    /// with them (on an external broker too).
    pub mqtt_auth: Option<MqttAuth>,
}

/// MQTT credentials (`--mqtt-auth USER:PASS`). `Debug` never shows the password, so options
/// printed in logs or errors do not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttAuth {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl MqttAuth {
    /// Parse `USER:PASS` (the password may contain `:`; neither may be empty).
    pub fn parse(text: &str) -> Result<MqttAuth, String> {
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(MqttAuth {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err("expected USER:PASS, neither empty".to_owned()),
        }
    }
}

impl std::fmt::Debug for MqttAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_offset: 0,
            ephemeral_ports: false,
            ready_file: None,
            state_dir: None,
            speed: 1.0,
            seed: 0,
            broker: None,
            arch: None,
            mqtt_auth: None,
        }
    }
}

impl LiveOptions {
    /// The address a service with `default_port` binds to.
    pub fn addr(&self, default_port: u16) -> SocketAddr {
        let port = if self.ephemeral_ports {
            0
        } else {
            default_port.saturating_add(self.port_offset)
        };
        SocketAddr::new(self.bind, port)
    }
}

/// The services' addresses, by name (`pdu_http`, `pump_mqtt`, …).
#[derive(Clone, Default)]
pub struct Services {
    inner: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Services {
    /// Record that `name` is listening at `address`.
    pub fn announce(&self, name: &str, address: impl Into<String>) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(name.to_owned(), address.into());
        }
    }

    /// Everything announced so far.
    pub fn all(&self) -> BTreeMap<String, String> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// What a twin gets to start its services.
pub struct LiveContext {
    /// The options of this run.
    pub options: LiveOptions,
    /// The runtime sockets live on.
    pub io: tokio::runtime::Handle,
    /// Where to announce addresses.
    pub services: Services,
    /// Steers the kernel (speed, pause, stop) from any thread.
    pub control: LiveControl,
    /// Sends actions and state reads to the twins' devices from any thread.
    pub controller: Controller,
}

/// A device that can run live.
pub trait LiveTwin {
    /// Short name (`pdu`, `pump`, `demo`), as given to `twin run --twin`.
    fn name(&self) -> &'static str;
    /// Build the device on `kernel`, bind its services on `ctx.io`, announce their addresses.
    fn start(&self, kernel: &mut Kernel, ctx: &LiveContext) -> anyhow::Result<Box<dyn LiveHandle>>;
}

/// A started twin.
pub trait LiveHandle {
    /// Flush state (e.g. the EEPROM image) before the process exits.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The running device, for actions and state reads from other threads ([`Controller`]).
    fn device(&mut self) -> Option<&mut dyn Device> {
        None
    }
    /// State keys of the twin's live services (their counters, e.g. `http.refused_busy`), read
    /// before the device's own keys.
    fn live_state(&self, _key: &str) -> Option<crate::devices::StateValue> {
        None
    }
}

/// Every twin `twin run` knows, in start order.
pub fn twins() -> Vec<Box<dyn LiveTwin>> {
    vec![
        Box::new(DemoTwin),
        Box::new(crate::devices::pdu::live::PduTwin),
        Box::new(crate::devices::pump::live::PumpTwin),
    ]
}

/// The twins started on a live kernel, with their I/O runtime: what `twin run` and the desktop
/// window drive. Lives on the thread that runs the kernel (the devices are not `Send`); the
/// [`LiveControl`] and [`Controller`] handles reach it from other threads.
pub struct Session {
    kernel: Kernel,
    runtime: tokio::runtime::Runtime,
    handles: control::Handles,
    names: Vec<&'static str>,
    control: LiveControl,
    controller: Controller,
    services: BTreeMap<String, String>,
    options: LiveOptions,
    /// The timeline being written, if any ([`Session::start_trace`]).
    trace: Option<(
        std::rc::Rc<std::cell::RefCell<crate::report::perfetto::TraceWriter>>,
        crate::kernel::ObserverId,
    )>,
}

impl Session {
    /// Start `twins` on a fresh live kernel: bind their services, announce them, write the ready
    /// file. The kernel does not run until [`Session::run_until`].
    pub fn start(options: LiveOptions, twins: Vec<Box<dyn LiveTwin>>) -> anyhow::Result<Session> {
        Session::start_with(options, twins, crate::kernel::History::RECENT)
    }

    /// [`Session::start`] on a kernel that keeps `history` of its past (`twin fleet` keeps
    /// none: thousands of devices' recent windows would be most of its memory).
    pub fn start_with(
        options: LiveOptions,
        twins: Vec<Box<dyn LiveTwin>>,
        history: crate::kernel::History,
    ) -> anyhow::Result<Session> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("twin-io")
            .enable_all()
            .build()
            .context("starting the I/O runtime")?;
        let mut kernel = Kernel::with_history(options.seed, history);
        let control = kernel.go_live(options.speed);
        let controller = Controller::default();
        let ctx = LiveContext {
            options: options.clone(),
            io: runtime.handle().clone(),
            services: Services::default(),
            control: control.clone(),
            controller: controller.clone(),
        };
        let handles: control::Handles = Default::default();
        for twin in &twins {
            let handle = twin
                .start(&mut kernel, &ctx)
                .with_context(|| format!("starting the {} twin", twin.name()))?;
            handles.borrow_mut().push((twin.name(), handle));
        }
        kernel
            .spawn(
                TaskSpec::world("live.control"),
                control::serve(controller.inbox(), handles.clone()),
            )
            .detach();
        let services = ctx.services.all();
        if let Some(path) = &options.ready_file {
            let json = serde_json::to_string_pretty(&services).context("ready file")?;
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Session {
            kernel,
            runtime,
            handles,
            names: twins.iter().map(|t| t.name()).collect(),
            control,
            controller,
            services,
            options,
            trace: None,
        })
    }

    /// Start writing the run's timeline to `path` (a Chrome/Perfetto trace-event file,
    /// streamed; see [`crate::report::perfetto`]). A trace already being written is finished
    /// first.
    pub fn start_trace(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        self.stop_trace()?;
        let writer = std::rc::Rc::new(std::cell::RefCell::new(
            crate::report::perfetto::TraceWriter::create(path)?,
        ));
        let id = self.kernel.observe(writer.clone());
        self.trace = Some((writer, id));
        Ok(())
    }

    /// Finish the timeline being written, if any, and return its path.
    pub fn stop_trace(&mut self) -> anyhow::Result<Option<PathBuf>> {
        let Some((writer, id)) = self.trace.take() else {
            return Ok(None);
        };
        self.kernel.unobserve(id);
        let now = self.kernel.now();
        let mut w = writer.borrow_mut();
        w.finish(now)?;
        Ok(Some(w.path().to_owned()))
    }

    /// The names of the running twins, in start order.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The services' addresses, by name.
    pub fn services(&self) -> &BTreeMap<String, String> {
        &self.services
    }

    /// Speed, pause and stop, from any thread.
    pub fn control(&self) -> LiveControl {
        self.control.clone()
    }

    /// Actions and state reads, from any thread.
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    /// The kernel the twins run on.
    pub fn kernel(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    /// The I/O runtime the services run on.
    pub fn io(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// Run the kernel, paced, until `until` or an interrupt.
    pub fn run_until(&mut self, until: Instant) -> RunEnd {
        self.kernel.run_until(until)
    }

    /// Let every twin flush its state, then stop the I/O runtime.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_trace()?;
        for (_, h) in self.handles.borrow_mut().iter_mut() {
            h.shutdown()?;
        }
        self.runtime.shutdown_background();
        Ok(())
    }
}

/// Run `twins` live until `until` (virtual) or Ctrl-C, printing their services and steered from
/// stdin (`twin run`).
pub fn run(
    options: LiveOptions,
    twins: Vec<Box<dyn LiveTwin>>,
    until: Option<Instant>,
    report_every: Option<Duration>,
) -> anyhow::Result<()> {
    run_traced(options, twins, until, report_every, None)
}

/// [`run`], writing the timeline to `trace` if given (`twin run --trace FILE.json`).
pub fn run_traced(
    options: LiveOptions,
    twins: Vec<Box<dyn LiveTwin>>,
    until: Option<Instant>,
    report_every: Option<Duration>,
    trace: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut session = Session::start(options, twins)?;
    if let Some(path) = trace {
        session.start_trace(path)?;
    }
    println!(
        "Twinbench live twin [{}]: speed {}x, seed {}. Ctrl-C stops; type `help` for commands.",
        session.names().join(", "),
        session.options.speed,
        session.options.seed
    );
    for (name, addr) in session.services() {
        println!("  {name:<16} {addr}");
    }
    {
        let control = session.control();
        session.runtime.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                control.interrupt();
            }
        });
    }
    spawn_stdin_control(session.control(), session.controller());

    let step = report_every.unwrap_or(Duration::from_secs(1));
    let until = until.unwrap_or(Instant::MAX);
    let mut next = Instant::ZERO + step;
    let end = loop {
        let end = session.run_until(next.min(until));
        if report_every.is_some() && end == RunEnd::Reached {
            print_utilisation(session.kernel(), step);
        }
        if end != RunEnd::Reached || session.kernel().now() >= until {
            break end;
        }
        next += step;
    };
    let now = session.kernel().now();
    session.shutdown()?;
    println!(
        "stopped at {} ({})",
        Duration::from_micros(now.as_micros()),
        match end {
            RunEnd::Interrupted => "interrupted",
            _ => "end of run",
        }
    );
    Ok(())
}

fn print_utilisation(kernel: &Kernel, window: Duration) {
    let now = kernel.now();
    let since = Instant::from_micros(now.as_micros().saturating_sub(window.as_micros()));
    let cores: Vec<String> = kernel
        .core_stats()
        .iter()
        .map(|c| format!("{} {:>5.1}%", c.name, 100.0 * c.utilisation(since, now)))
        .collect();
    println!(
        "[{:>12}] {}",
        Duration::from_micros(now.as_micros()),
        cores.join("  ")
    );
}

const STDIN_HELP: &str = "commands: pause, resume, speed N, quit, \
act TWIN VERB [key=value ...] (a scenario action), state TWIN KEY [KEY ...] (scenario state keys)";

/// How long a stdin `act`/`state` waits for the kernel (a paused kernel still serves them).
const STDIN_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `pause`, `resume`, `speed N`, `quit`, `act …` and `state …` on stdin steer the run.
fn spawn_stdin_control(control: LiveControl, controller: Controller) {
    let spawned = std::thread::Builder::new()
        .name("twin-stdin".into())
        .spawn(move || {
            let mut speed = control.speed();
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { return };
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["pause"] => control.set_speed(0.0),
                    ["resume"] => control.set_speed(speed),
                    ["speed", n] => match n.parse::<f64>() {
                        Ok(v) if crate::kernel::pacing::SPEED_RANGE.contains(&v) => {
                            speed = v;
                            control.set_speed(v);
                        }
                        _ => eprintln!("speed must be a number from 0.1 to 100"),
                    },
                    ["quit"] => {
                        control.interrupt();
                        return;
                    }
                    ["act", twin, verb, params @ ..] => {
                        let outcome = control::parse_params(params)
                            .and_then(|p| controller.act(twin, verb, p))
                            .and_then(|rx| {
                                rx.recv_timeout(STDIN_REPLY_TIMEOUT)
                                    .map_err(|_| "the twin did not answer".to_owned())?
                            });
                        match outcome {
                            Ok(()) => println!("ok"),
                            Err(e) => println!("error: {e}"),
                        }
                    }
                    ["state", twin, keys @ ..] if !keys.is_empty() => {
                        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
                        let outcome = controller.state(twin, keys.clone()).and_then(|rx| {
                            rx.recv_timeout(STDIN_REPLY_TIMEOUT)
                                .map_err(|_| "the twin did not answer".to_owned())?
                        });
                        match outcome {
                            Ok(values) => {
                                for (k, v) in keys.iter().zip(values) {
                                    match v {
                                        Some(v) => println!("{twin}.{k} = {v}"),
                                        None => println!("{twin}.{k}: no such state"),
                                    }
                                }
                            }
                            Err(e) => println!("error: {e}"),
                        }
                    }
                    [] => {}
                    _ => eprintln!("{STDIN_HELP}"),
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("no stdin control: {e}");
    }
}

/// The kernel demonstration (`demo.cores`): two cores, a control loop, a network burst and a UI.
struct DemoTwin;

const DEMO: &str = r#"
[[test]]
name = "live demo"
duration = "1h"
[test.devices.demo]
kind = "demo.cores"
cores = ["core0", "core1"]
[[test.devices.demo.task]]
name = "control"
core = "core0"
priority = 9
period = "10ms"
cost = "500us"
[[test.devices.demo.task]]
name = "network"
core = "core0"
priority = 1
period = "100ms"
cost = "20ms"
[[test.devices.demo.task]]
name = "ui"
core = "core1"
priority = 5
period = "50ms"
cost = "5ms"
[[test.expect]]
state = "kernel.core.demo.core0.busy_us"
min = 0
"#;

impl LiveTwin for DemoTwin {
    fn name(&self) -> &'static str {
        "demo"
    }
    fn start(
        &self,
        kernel: &mut Kernel,
        _ctx: &LiveContext,
    ) -> anyhow::Result<Box<dyn LiveHandle>> {
        let cases = crate::scenario::load_str(std::path::Path::new("<built-in demo>"), DEMO)?;
        let case = cases.first().context("the built-in demo has no test")?;
        let devices = case
            .devices
            .iter()
            .map(|(name, spec)| spec.build(name, kernel))
            .collect();
        Ok(Box::new(DemoHandle(devices)))
    }
}

/// The demo's devices (one, `demo`).
struct DemoHandle(Vec<Box<dyn Device>>);

impl LiveHandle for DemoHandle {
    fn device(&mut self) -> Option<&mut dyn Device> {
        self.0.first_mut().map(|d| &mut **d as &mut dyn Device)
    }
}
