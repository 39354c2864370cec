//! Dispensing and recipes: the pump controller's motion side.
//!
//! [`PumpMotion`] is the sans-IO core of the motion task. It owns the FluidNC [`Client`], turns
//! [`DispenseRequest`]s into G-code, watches status reports for completion, tracks what each
//! pump dispensed, runs recipes, sequences emergency stops ([`StopSequence`]), sets the
//! [`Governor`], and reports everything as [`PumpEvent`]s that the MQTT/WebSocket side turns into
//! messages. [`MotionTask`] is the thin async runner around it.
//!
//! # From a request to G-code
//! A dose of `volume_ml` at `flow_ml_min` on a pump with `ml_per_mm` calibration is
//! `volume / ml_per_mm` mm of axis travel at `flow / ml_per_mm` mm/min. A feed above the axis's
//! `max_rate_mm_min` is clamped (FluidNC's planner would clamp it anyway) and the clamp is
//! reported as [`PumpEvent::RateClamped`], never silently. Moves are incremental:
//! `G91 G1 X<mm> F<mm/min>`; the `G91` rides on every line because a reset restores `G90`.
//!
//! **Several pumps at once** run as *one* `G1` with several axis words (`G91 G1 X4 Y2 F…`). The
//! controller moves all axes together along one vector, so they start and stop together: the
//! dose takes as long as its slowest pump needs at its requested (clamped) flow, and every
//! other pump runs proportionally slower than it asked for. The planned per-pump flow is in
//! [`PumpEvent::DispenseStarted`]. The vector feed is `F = |d| / T` (|d| the Euclidean length of
//! the axis distances, T the duration), which keeps every axis at or below its own rate. Run
//! doses one after another (recipe steps) when each pump must keep its own flow.
//!
//! # Completion
//! Before sending the move, the core asks for a fresh status report (`?`) and takes the start
//! position from it (and refuses to start if the machine is not `Idle`). The dose is complete
//! only on an `Idle` report that comes after the line's `ok` *and* either after a report showing
//! motion (`Run`, `Hold`, `Jog`, …) or with the axes at their targets. A stale `Idle` pushed
//! before the move started therefore does not complete it. While a dose runs the core polls `?`
//! every [`MotionConfig::status_poll`] (FluidNC also pushes reports on its own). A dose whose
//! `Idle` never comes raises [`AlarmKind::DispenseTimeout`] at `expected × timeout_factor_pct /
//! 100 + timeout_margin` after the line was sent, and the motion is stopped. `error:N` for the
//! move and `ALARM:N` abort it with an alarm.
//!
//! # Alarms and emergency
//! Every alarm (machine alarm, rejected command, timeout, lost controller) latches: new doses
//! are refused until [`PumpMotion::resume`]. An emergency stop puts the governor in
//! `EMERGENCY`, which only `resume` leaves; a dose finishing or aborting meanwhile never moves it
//! back to `IDLE`.
use core::fmt::{self, Write as _};

use embassy_futures::select::{Either4, select4};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::Watch;
use embedded_io_async::{Read, Write};
use heapless::{Deque, String, Vec};

use super::estop::{EstopTrigger, LedPattern, StopConfig, StopOutcome, StopSequence};
use super::fluidnc::{
    Client, ClientConfig, ClientEvent, LineTag, MachineState, RX_BUFFER, Realtime,
};
use super::governor::{Governor, Priority, Reason};
use super::{DispenseRequest, PUMPS, Pump, PumpStatus};
use crate::ports::Clock;
use crate::queue::{FullPolicy, Queue};
use crate::time::{Duration, Instant};

/// Longest recipe name, bytes.
pub const RECIPE_NAME: usize = 24;
/// Most steps in a recipe.
pub const RECIPE_STEPS: usize = 16;
/// Recipes the table holds.
pub const RECIPES: usize = 8;
/// Events the core buffers for [`PumpMotion::poll_event`]. Full policy: the oldest event that is
/// not an emergency is dropped and counted ([`PumpMotion::events_dropped`]).
const EVENT_BUFFER: usize = 32;
/// Position tolerance when deciding an axis reached its target (reports have 3 decimals).
const TARGET_TOLERANCE_MM: f32 = 0.002;

/// A recipe name.
pub type RecipeName = String<RECIPE_NAME>;
/// Per-pump millilitres, in axis order X, Y, Z, A.
pub type PerPump = [f32; PUMPS];

// ---------------------------------------------------------------------------------------------
// Configuration

/// Calibration and timing of the motion side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionConfig {
    /// Millilitres per millimetre of axis travel, per pump (the pump's calibration).
    pub ml_per_mm: PerPump,
    /// The axis's configured maximum rate, mm/min, per pump (FluidNC `max_rate_mm_per_min`).
    pub max_rate_mm_min: PerPump,
    /// Longest travel one dose may ask of an axis, mm (guards against absurd requests).
    pub max_travel_mm: f32,
    /// Dose timeout = expected duration × this / 100 + [`timeout_margin`](Self::timeout_margin).
    pub timeout_factor_pct: u32,
    /// Added to the scaled expected duration (acceleration, report latency).
    pub timeout_margin: Duration,
    /// Longest wait for the status report that gives a dose its start position.
    pub sync_timeout: Duration,
    /// Interval of `?` polls while a dose runs (Grbl recommends at most 5 Hz).
    pub status_poll: Duration,
    /// Least interval between [`PumpEvent::DispenseProgress`] events of one dose.
    pub progress_interval: Duration,
    /// Stop-sequence timing.
    pub stop: StopConfig,
    /// FluidNC client timing.
    pub client: ClientConfig,
}

impl Default for MotionConfig {
    /// The seed pump's values: 0.05 ml/mm, 200 mm/min per axis.
    fn default() -> Self {
        MotionConfig {
            ml_per_mm: [0.05; PUMPS],
            max_rate_mm_min: [200.0; PUMPS],
            max_travel_mm: 100_000.0,
            timeout_factor_pct: 150,
            timeout_margin: Duration::from_secs(3),
            sync_timeout: Duration::from_millis(1_000),
            status_poll: Duration::from_millis(200),
            progress_interval: Duration::from_millis(500),
            stop: StopConfig::default(),
            client: ClientConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events and errors

/// Why an alarm was raised. `EmergencyStop` is the `EMERGENCY_STOP` alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum AlarmKind {
    /// The emergency stop fired.
    EmergencyStop {
        /// What fired it.
        trigger: EstopTrigger,
    },
    /// FluidNC reported `ALARM:N`.
    MachineAlarm(u16),
    /// FluidNC rejected the move with `error:N`.
    CommandError(u16),
    /// The dose's `Idle` did not come within its timeout.
    DispenseTimeout,
    /// No status report came when one was needed.
    NoStatus,
    /// The machine was not `Idle` when a dose was about to start, or entered `Alarm`.
    NotIdle(MachineState),
    /// The controller reset itself while a dose was running.
    ControllerReset,
    /// A stop sequence went ahead without every step confirmed (controller silent).
    StopUnconfirmed,
}

impl AlarmKind {
    /// The `eventType` string published on `pump/controller/alarm`.
    pub const fn event_type(self) -> &'static str {
        match self {
            AlarmKind::EmergencyStop { .. } => "EMERGENCY_STOP",
            AlarmKind::MachineAlarm(_) => "MACHINE_ALARM",
            AlarmKind::CommandError(_) => "COMMAND_ERROR",
            AlarmKind::DispenseTimeout => "DISPENSE_TIMEOUT",
            AlarmKind::NoStatus => "NO_STATUS",
            AlarmKind::NotIdle(_) => "MACHINE_NOT_IDLE",
            AlarmKind::ControllerReset => "CONTROLLER_RESET",
            AlarmKind::StopUnconfirmed => "STOP_UNCONFIRMED",
        }
    }
}

impl fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlarmKind::EmergencyStop { trigger } => {
                write!(f, "emergency stop ({})", trigger.name())
            }
            AlarmKind::MachineAlarm(n) => write!(f, "ALARM:{n}"),
            AlarmKind::CommandError(n) => write!(f, "error:{n}"),
            AlarmKind::DispenseTimeout => f.write_str("dispense timed out"),
            AlarmKind::NoStatus => f.write_str("no status report"),
            AlarmKind::NotIdle(s) => write!(f, "machine not idle ({s:?})"),
            AlarmKind::ControllerReset => f.write_str("controller reset"),
            AlarmKind::StopUnconfirmed => f.write_str("stop not confirmed"),
        }
    }
}

/// Why a dose was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum AbortCause {
    /// An operator's (non-emergency) stop.
    Stopped,
    /// An alarm, the emergency stop among them.
    Alarm(AlarmKind),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum DispenseError {
    /// Emergency stop latched; resume first.
    Emergency,
    /// An alarm is latched; resume first.
    AlarmLatched,
    /// A dose, recipe or stop is already running.
    Busy,
    /// No dose given.
    NoDoses,
    /// The same pump twice in one dose.
    DuplicatePump,
    /// Volume not a positive finite number, or too small to move the axis.
    InvalidVolume,
    /// Flow not a positive finite number.
    InvalidFlow,
    /// Calibration (`ml_per_mm`) or maximum rate not positive.
    BadCalibration,
    /// More travel than [`MotionConfig::max_travel_mm`].
    TooLarge,
    /// No recipe of that name.
    UnknownRecipe,
    /// The recipe has no steps.
    EmptyRecipe,
    /// The recipe table is full.
    TableFull,
    /// Nothing to stop or resume.
    NothingToDo,
    /// The stop sequence is still running.
    Stopping,
}

impl fmt::Display for DispenseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DispenseError::Emergency => "emergency stop latched",
            DispenseError::AlarmLatched => "alarm latched",
            DispenseError::Busy => "busy",
            DispenseError::NoDoses => "no dose",
            DispenseError::DuplicatePump => "pump given twice",
            DispenseError::InvalidVolume => "invalid volume",
            DispenseError::InvalidFlow => "invalid flow",
            DispenseError::BadCalibration => "bad calibration",
            DispenseError::TooLarge => "travel too large",
            DispenseError::UnknownRecipe => "unknown recipe",
            DispenseError::EmptyRecipe => "empty recipe",
            DispenseError::TableFull => "recipe table full",
            DispenseError::NothingToDo => "nothing to do",
            DispenseError::Stopping => "stop in progress",
        })
    }
}

impl core::error::Error for DispenseError {}

/// What the motion side reports; the MQTT/WebSocket side turns these into messages.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PumpEvent {
    /// A dose was accepted and is starting.
    DispenseStarted {
        /// Dose id (counts up from 1).
        id: u32,
        /// Requested volume per pump (0 for pumps not in the dose).
        volume_ml: PerPump,
        /// Planned flow per pump after clamping and multi-pump scaling.
        flow_ml_min: PerPump,
        /// Expected duration, ms.
        expected_ms: u32,
    },
    /// Dispensed so far (from reported positions).
    DispenseProgress {
        /// Dose id.
        id: u32,
        /// Millilitres per pump so far.
        dispensed_ml: PerPump,
    },
    /// The dose finished (`Idle` after its motion).
    DispenseComplete {
        /// Dose id.
        id: u32,
        /// Millilitres per pump.
        dispensed_ml: PerPump,
        /// From the line being sent to `Idle`, ms.
        duration_ms: u32,
    },
    /// The dose was aborted; what was dispensed until the machine stopped.
    DispenseAborted {
        /// Dose id.
        id: u32,
        /// Millilitres per pump.
        dispensed_ml: PerPump,
        /// Why.
        cause: AbortCause,
    },
    /// The requested feed exceeded the axis's maximum rate and was clamped.
    RateClamped {
        /// The pump.
        pump: Pump,
        /// Requested feed, mm/min.
        requested_mm_min: f32,
        /// Feed used, mm/min.
        applied_mm_min: f32,
    },
    /// An alarm (`EMERGENCY_STOP` among them). Latched until resume.
    Alarm(AlarmKind),
    /// Back to `IDLE` after an emergency or alarm; what the aborted dose had dispensed.
    Resumed {
        /// Millilitres per pump of the dose the stop interrupted (zeros if none).
        dispensed_ml: PerPump,
    },
    /// A request was refused.
    Rejected(DispenseError),
    /// A recipe started.
    RecipeStarted {
        /// Its name.
        name: RecipeName,
        /// Number of steps.
        steps: u8,
    },
    /// A recipe step (0-based) started.
    RecipeStep {
        /// Recipe name.
        name: RecipeName,
        /// Step index.
        step: u8,
    },
    /// Every step of the recipe completed.
    RecipeComplete {
        /// Its name.
        name: RecipeName,
    },
    /// The recipe stopped at `step` because that step's dose was aborted.
    RecipeAborted {
        /// Its name.
        name: RecipeName,
        /// The step that was aborted.
        step: u8,
    },
}

impl PumpEvent {
    /// Whether this is emergency traffic (goes ahead of everything, never throttled).
    pub fn is_emergency(&self) -> bool {
        matches!(
            self,
            PumpEvent::Alarm(AlarmKind::EmergencyStop { .. }) | PumpEvent::Resumed { .. }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Recipes

/// One recipe step: doses that run together (one `G1`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecipeStep {
    /// The doses, at most one per pump.
    pub doses: Vec<DispenseRequest, PUMPS>,
}

/// A named, ordered list of steps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recipe {
    /// Name (unique in a [`RecipeTable`]).
    pub name: RecipeName,
    /// Steps, run in order.
    pub steps: Vec<RecipeStep, RECIPE_STEPS>,
}

/// A fixed-capacity table of recipes. Full policy: [`insert`](Self::insert) of a new name
/// refuses with [`DispenseError::TableFull`]; an existing name is replaced.
#[derive(Debug, Clone, Default)]
pub struct RecipeTable<const N: usize> {
    recipes: Vec<Recipe, N>,
}

impl<const N: usize> RecipeTable<N> {
    /// An empty table.
    pub const fn new() -> Self {
        RecipeTable {
            recipes: Vec::new(),
        }
    }
    /// Add `recipe`, replacing one of the same name (returned).
    pub fn insert(&mut self, recipe: Recipe) -> Result<Option<Recipe>, DispenseError> {
        if let Some(slot) = self.recipes.iter_mut().find(|r| r.name == recipe.name) {
            return Ok(Some(core::mem::replace(slot, recipe)));
        }
        self.recipes
            .push(recipe)
            .map(|()| None)
            .map_err(|_| DispenseError::TableFull)
    }
    /// The recipe called `name`.
    pub fn get(&self, name: &str) -> Option<&Recipe> {
        self.recipes.iter().find(|r| r.name == name)
    }
    /// Remove and return the recipe called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Recipe> {
        let i = self.recipes.iter().position(|r| r.name == name)?;
        Some(self.recipes.remove(i))
    }
    /// All recipes, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Recipe> {
        self.recipes.iter()
    }
    /// Number of recipes.
    pub fn len(&self) -> usize {
        self.recipes.len()
    }
    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.recipes.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Planning

/// A dose turned into G-code.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The line to send (without newline).
    pub line: String<RX_BUFFER>,
    /// Axis travel per pump, mm, as written in the line (0 for pumps not in the dose).
    pub travel_mm: PerPump,
    /// Requested volume per pump.
    pub volume_ml: PerPump,
    /// Planned flow per pump after clamping and multi-pump scaling.
    pub flow_ml_min: PerPump,
    /// Feeds that were clamped: (pump, requested, applied) mm/min.
    pub clamps: Vec<(Pump, f32, f32), PUMPS>,
    /// Expected duration of the move (acceleration not included).
    pub expected: Duration,
}

/// Square root by Newton's method (`f32::sqrt` needs std).
fn sqrt(x: f32) -> f32 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let mut g = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..40 {
        g = 0.5 * (g + x / g);
    }
    g
}

/// Round to 3 decimals, as the line will carry it (`{:.3}`). Inputs are bounded by
/// `max_travel_mm`, so the integer cast cannot saturate in practice (and saturates if it did).
fn round3(x: f32) -> f32 {
    ((x * 1000.0 + 0.5) as i64) as f32 / 1000.0
}

/// Turn `doses` into one `G91 G1` line with the calibration in `cfg`.
pub fn plan(doses: &[DispenseRequest], cfg: &MotionConfig) -> Result<Plan, DispenseError> {
    if doses.is_empty() {
        return Err(DispenseError::NoDoses);
    }
    let mut travel = [0.0f32; PUMPS];
    let mut feed = [0.0f32; PUMPS];
    let mut volume = [0.0f32; PUMPS];
    let mut used = [false; PUMPS];
    let mut clamps = Vec::new();
    for d in doses {
        let i = d.pump.index();
        if used[i] {
            return Err(DispenseError::DuplicatePump);
        }
        used[i] = true;
        if !(d.volume_ml.is_finite() && d.volume_ml > 0.0) {
            return Err(DispenseError::InvalidVolume);
        }
        if !(d.flow_ml_min.is_finite() && d.flow_ml_min > 0.0) {
            return Err(DispenseError::InvalidFlow);
        }
        let k = cfg.ml_per_mm[i];
        let max = cfg.max_rate_mm_min[i];
        if !(k.is_finite() && k > 0.0 && max.is_finite() && max > 0.0) {
            return Err(DispenseError::BadCalibration);
        }
        let mm = d.volume_ml / k;
        if !(mm.is_finite() && mm <= cfg.max_travel_mm) {
            return Err(DispenseError::TooLarge);
        }
        let mm = round3(mm);
        if mm <= 0.0 {
            return Err(DispenseError::InvalidVolume);
        }
        let mut f = d.flow_ml_min / k;
        if !f.is_finite() || f > max {
            let _ = clamps.push((d.pump, f, max));
            f = max;
        }
        travel[i] = mm;
        feed[i] = f;
        volume[i] = d.volume_ml;
    }
    // The slowest pump sets the duration; minutes.
    let mut minutes = 0.0f32;
    let mut len2 = 0.0f32;
    for i in 0..PUMPS {
        if used[i] {
            let t = travel[i] / feed[i];
            if t > minutes {
                minutes = t;
            }
            len2 += travel[i] * travel[i];
        }
    }
    let vector_feed = sqrt(len2) / minutes;
    if !(vector_feed.is_finite() && vector_feed > 0.0) {
        return Err(DispenseError::InvalidFlow);
    }
    let mut line: String<RX_BUFFER> = String::new();
    let mut flow = [0.0f32; PUMPS];
    let _ = line.push_str("G91 G1");
    for p in Pump::ALL {
        let i = p.index();
        if used[i] {
            let _ = write!(line, " {}{:.3}", p.axis(), travel[i]);
            flow[i] = travel[i] / minutes * cfg.ml_per_mm[i];
        }
    }
    // Travel is bounded by max_travel_mm and feed by the axis rates, so this always fits.
    if write!(line, " F{:.3}", vector_feed).is_err() {
        return Err(DispenseError::TooLarge);
    }
    let expected = Duration::from_micros((minutes * 60_000_000.0) as u64);
    Ok(Plan {
        line,
        travel_mm: travel,
        volume_ml: volume,
        flow_ml_min: flow,
        clamps,
        expected,
    })
}

// ---------------------------------------------------------------------------------------------
// The core

/// A request to the motion task (from MQTT, WebSocket, REST, or the serial link).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MotionCommand {
    /// Dispense these doses together.
    Dispense(Vec<DispenseRequest, PUMPS>),
    /// Run the named recipe from the table.
    StartRecipe(RecipeName),
    /// Stop the running dose or recipe (not an emergency: no latch).
    Stop,
    /// Emergency stop.
    EmergencyStop(EstopTrigger),
    /// Leave an emergency or a latched alarm.
    Resume,
}

/// A snapshot for the status publisher and the UI.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct MotionSnapshot {
    /// Per pump: position, moving, total dispensed.
    pub pumps: [PumpStatus; PUMPS],
    /// The machine state from the last report, if any.
    pub machine: Option<MachineState>,
    /// The LED pattern.
    pub led: LedPattern,
    /// A dose or recipe is running.
    pub dispensing: bool,
    /// The emergency stop is latched.
    pub emergency: bool,
    /// The latched alarm, if any.
    pub alarm: Option<AlarmKind>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for the status report that gives the start position.
    Syncing,
    /// The line is out; waiting for its `ok`.
    Sent(LineTag),
    /// `ok` received; waiting for `Idle` after motion.
    Acked,
}

#[derive(Debug, Clone)]
struct Active {
    id: u32,
    phase: Phase,
    plan: Plan,
    used: [bool; PUMPS],
    start: PerPump,
    started_at: Instant,
    deadline: Instant,
    seen_motion: bool,
    dispensed: PerPump,
    last_progress: Instant,
}

impl Active {
    fn update(&mut self, pos: &PerPump, ml_per_mm: &PerPump) {
        for i in 0..PUMPS {
            if self.used[i] {
                let d = pos[i] - self.start[i];
                self.dispensed[i] = if d > 0.0 { d * ml_per_mm[i] } else { 0.0 };
            }
        }
    }
    fn reached(&self, pos: &PerPump) -> bool {
        (0..PUMPS).all(|i| {
            !self.used[i] || pos[i] - self.start[i] >= self.plan.travel_mm[i] - TARGET_TOLERANCE_MM
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StopCause {
    Emergency(EstopTrigger),
    Fault(AlarmKind),
    User,
}

#[derive(Debug, Clone)]
struct RecipeRun {
    recipe: Recipe,
    step: usize,
}

/// The sans-IO core of the motion task.
///
/// Call order: requests ([`dispense`](Self::dispense), [`start_recipe`](Self::start_recipe),
/// [`stop`](Self::stop), [`estop`](Self::estop), [`resume`](Self::resume)) and inputs
/// ([`handle_bytes`](Self::handle_bytes), [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) passes) in any order; after each, drain
/// [`poll_transmit`](Self::poll_transmit) to the UART first, then
/// [`poll_event`](Self::poll_event).
pub struct PumpMotion<'g, M: RawMutex, const W: usize> {
    gov: &'g Governor<M, W>,
    cfg: MotionConfig,
    client: Client,
    recipes: RecipeTable<RECIPES>,
    active: Option<Active>,
    recipe: Option<RecipeRun>,
    stop: Option<(StopSequence, StopCause)>,
    emergency: bool,
    alarm: Option<AlarmKind>,
    next_poll: Option<Instant>,
    position: Option<PerPump>,
    machine: Option<MachineState>,
    totals: PerPump,
    aborted: PerPump,
    led: LedPattern,
    next_id: u32,
    events: Deque<PumpEvent, EVENT_BUFFER>,
    events_dropped: u32,
    /// When bytes last arrived from the board (the deliberate bug of `broken-firmware`).
    #[cfg(feature = "broken-firmware")]
    last_rx: Option<Instant>,
}

impl<'g, M: RawMutex, const W: usize> PumpMotion<'g, M, W> {
    /// A core at rest, setting `gov`.
    pub fn new(gov: &'g Governor<M, W>, cfg: MotionConfig) -> Self {
        PumpMotion {
            gov,
            cfg,
            client: Client::new(cfg.client),
            recipes: RecipeTable::new(),
            active: None,
            recipe: None,
            stop: None,
            emergency: false,
            alarm: None,
            next_poll: None,
            position: None,
            machine: None,
            totals: [0.0; PUMPS],
            aborted: [0.0; PUMPS],
            led: LedPattern::Idle,
            next_id: 1,
            events: Deque::new(),
            events_dropped: 0,
            #[cfg(feature = "broken-firmware")]
            last_rx: None,
        }
    }

    /// The recipe table.
    pub fn recipes(&self) -> &RecipeTable<RECIPES> {
        &self.recipes
    }
    /// The recipe table, to add or remove recipes.
    pub fn recipes_mut(&mut self) -> &mut RecipeTable<RECIPES> {
        &mut self.recipes
    }
    /// The FluidNC client (stats, last report).
    pub fn client(&self) -> &Client {
        &self.client
    }
    /// The LED pattern to show now.
    pub fn led_pattern(&self) -> LedPattern {
        self.led
    }
    /// Events dropped because the buffer was full.
    pub fn events_dropped(&self) -> u32 {
        self.events_dropped
    }
    /// Whether a dose, recipe or stop sequence is running.
    pub fn is_busy(&self) -> bool {
        self.active.is_some() || self.recipe.is_some() || self.stop.is_some()
    }

    /// A snapshot for status publishing.
    pub fn snapshot(&self) -> MotionSnapshot {
        let pos = self.position.unwrap_or_default();
        MotionSnapshot {
            pumps: core::array::from_fn(|i| PumpStatus {
                position_mm: pos[i],
                active: self.active.as_ref().is_some_and(|a| a.used[i])
                    && self.machine.is_some_and(|m| m.is_moving()),
                dispensed_ml: self.totals[i] + self.active.as_ref().map_or(0.0, |a| a.dispensed[i]),
            }),
            machine: self.machine,
            led: self.led,
            dispensing: self.active.is_some() || self.recipe.is_some(),
            emergency: self.emergency,
            alarm: self.alarm,
        }
    }

    // --- requests ---------------------------------------------------------------------------

    /// Dispense `doses` together (one `G1`). Returns the dose id.
    pub fn dispense(
        &mut self,
        doses: &[DispenseRequest],
        now: Instant,
    ) -> Result<u32, DispenseError> {
        self.check_ready()?;
        let plan = plan(doses, &self.cfg)?;
        Ok(self.start_plan(plan, now))
    }

    /// Run the recipe called `name`.
    pub fn start_recipe(&mut self, name: &str, now: Instant) -> Result<u32, DispenseError> {
        self.check_ready()?;
        let recipe = self
            .recipes
            .get(name)
            .ok_or(DispenseError::UnknownRecipe)?
            .clone();
        let first = recipe.steps.first().ok_or(DispenseError::EmptyRecipe)?;
        // Check every step up front so that a recipe never stops half-way on a bad step.
        for step in &recipe.steps {
            plan(&step.doses, &self.cfg)?;
        }
        let plan = plan(&first.doses, &self.cfg)?;
        self.push(PumpEvent::RecipeStarted {
            name: recipe.name.clone(),
            steps: recipe.steps.len() as u8,
        });
        self.push(PumpEvent::RecipeStep {
            name: recipe.name.clone(),
            step: 0,
        });
        self.recipe = Some(RecipeRun { recipe, step: 0 });
        Ok(self.start_plan(plan, now))
    }

    /// Stop the running dose or recipe without an emergency: the motion is cancelled (hold,
    /// reset, unlock) and the dose reported aborted.
    pub fn stop(&mut self, now: Instant) -> Result<(), DispenseError> {
        if self.stop.is_some() {
            return Err(DispenseError::Stopping);
        }
        if self.active.is_none() {
            return Err(DispenseError::NothingToDo);
        }
        self.start_stop(StopCause::User, now);
        Ok(())
    }

    /// Emergency stop. `!` becomes the first byte [`poll_transmit`](Self::poll_transmit) hands
    /// out; then the governor goes to `EMERGENCY`, the `EMERGENCY_STOP` alarm is put ahead of
    /// every buffered event, the LEDs switch, and the remaining motion is cancelled.
    pub fn estop(&mut self, trigger: EstopTrigger, now: Instant) {
        // The deliberate bug of the test-only `broken-firmware` feature: an edge within 3 ms of
        // UART input is taken for contact bounce and dropped. It strikes only when the press
        // coincides with a status report, which a fixed-time scenario rarely hits and a sweep
        // finds.
        #[cfg(feature = "broken-firmware")]
        if self
            .last_rx
            .is_some_and(|t| now >= t && now - t < Duration::from_millis(3))
        {
            warn!("estop: edge dropped (broken-firmware)");
            return;
        }
        self.start_stop(StopCause::Emergency(trigger), now);
        self.gov.emergency(Reason::EmergencyStop);
        self.emergency = true;
        self.led = LedPattern::Emergency;
        self.push_front(PumpEvent::Alarm(AlarmKind::EmergencyStop { trigger }));
        warn!("estop: {}", trigger.name());
    }

    /// Leave an emergency or a latched alarm: governor back to `IDLE`, and
    /// [`PumpEvent::Resumed`] with what the interrupted dose had dispensed. Sends no `~`: the
    /// interrupted motion was cancelled, nothing is resumed on the machine.
    pub fn resume(&mut self, now: Instant) -> Result<(), DispenseError> {
        let _ = now;
        if self.stop.is_some() {
            return Err(DispenseError::Stopping);
        }
        if !self.emergency && self.alarm.is_none() {
            return Err(DispenseError::NothingToDo);
        }
        if matches!(
            self.alarm,
            Some(
                AlarmKind::MachineAlarm(_)
                    | AlarmKind::CommandError(_)
                    | AlarmKind::NotIdle(MachineState::Alarm)
            )
        ) {
            // Unlock the controller (answers `ok` even when not in alarm).
            let _ = self.client.send_line("$X");
        }
        self.emergency = false;
        self.alarm = None;
        self.gov.resume();
        self.led = LedPattern::Idle;
        let dispensed_ml = core::mem::take(&mut self.aborted);
        self.push_front(PumpEvent::Resumed { dispensed_ml });
        info!("motion: resumed");
        Ok(())
    }

    /// Apply a [`MotionCommand`]. A refusal is also reported as [`PumpEvent::Rejected`].
    pub fn handle_command(
        &mut self,
        cmd: MotionCommand,
        now: Instant,
    ) -> Result<(), DispenseError> {
        let r = match cmd {
            MotionCommand::Dispense(doses) => self.dispense(&doses, now).map(|_| ()),
            MotionCommand::StartRecipe(name) => self.start_recipe(&name, now).map(|_| ()),
            MotionCommand::Stop => self.stop(now),
            MotionCommand::EmergencyStop(t) => {
                self.estop(t, now);
                Ok(())
            }
            MotionCommand::Resume => self.resume(now),
        };
        if let Err(e) = r {
            self.push(PumpEvent::Rejected(e));
        }
        r
    }

    // --- sans-IO plumbing -------------------------------------------------------------------

    /// Feed bytes received from FluidNC.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant) {
        #[cfg(feature = "broken-firmware")]
        {
            self.last_rx = Some(now);
        }
        self.client.handle_bytes(bytes, now);
        self.drain_client(now);
    }

    /// Handle the passage of time.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        if let Some((seq, cause)) = self.stop.as_mut() {
            let cause = *cause;
            if let Some(out) = seq.handle_timeout(&mut self.client, now) {
                self.finish_stop(out, cause, now);
            }
        } else if let Some(a) = self.active.as_ref() {
            if now >= a.deadline {
                match a.phase {
                    Phase::Syncing => self.abort(AlarmKind::NoStatus, false, now),
                    Phase::Sent(_) | Phase::Acked => {
                        error!("dispense {}: timed out", a.id);
                        self.abort(AlarmKind::DispenseTimeout, true, now)
                    }
                }
            } else if self.next_poll.is_some_and(|t| now >= t) {
                self.client.send_realtime(Realtime::StatusQuery);
                self.next_poll = Some(now + self.cfg.status_poll);
            }
        }
        self.drain_client(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.client.poll_timeout();
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if let Some((seq, _)) = &self.stop {
            min(seq.poll_timeout());
        } else if let Some(a) = &self.active {
            min(Some(a.deadline));
            min(self.next_poll);
        }
        t
    }

    /// The next chunk for the UART (realtime bytes first).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<super::fluidnc::Transmit> {
        self.client.poll_transmit()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PumpEvent> {
        self.events.pop_front()
    }

    // --- internals --------------------------------------------------------------------------

    fn check_ready(&self) -> Result<(), DispenseError> {
        if self.emergency {
            Err(DispenseError::Emergency)
        } else if self.alarm.is_some() {
            Err(DispenseError::AlarmLatched)
        } else if self.is_busy() {
            Err(DispenseError::Busy)
        } else {
            Ok(())
        }
    }

    fn start_plan(&mut self, plan: Plan, now: Instant) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        for &(pump, requested_mm_min, applied_mm_min) in &plan.clamps {
            warn!(
                "dispense {}: pump {} feed {} clamped to {} mm/min",
                id,
                pump.axis(),
                requested_mm_min,
                applied_mm_min
            );
            self.push(PumpEvent::RateClamped {
                pump,
                requested_mm_min,
                applied_mm_min,
            });
        }
        self.push(PumpEvent::DispenseStarted {
            id,
            volume_ml: plan.volume_ml,
            flow_ml_min: plan.flow_ml_min,
            expected_ms: plan.expected.as_millis().min(u32::MAX as u64) as u32,
        });
        self.gov
            .request(Priority::Dispensing, Reason::DispenseStarted);
        self.led = LedPattern::Dispensing;
        // A report generated before this instant must not give the start position: ask anew.
        self.client.clear_last_status();
        self.client.send_realtime(Realtime::StatusQuery);
        let used = core::array::from_fn(|i| plan.travel_mm[i] > 0.0);
        self.active = Some(Active {
            id,
            phase: Phase::Syncing,
            plan,
            used,
            start: [0.0; PUMPS],
            started_at: now,
            deadline: now + self.cfg.sync_timeout,
            seen_motion: false,
            dispensed: [0.0; PUMPS],
            last_progress: now,
        });
        self.next_poll = Some(now + self.cfg.status_poll);
        info!("dispense {}: starting", id);
        id
    }

    fn timeout_for(&self, expected: Duration) -> Duration {
        let scaled = expected
            .as_micros()
            .saturating_mul(self.cfg.timeout_factor_pct as u64)
            / 100;
        Duration::from_micros(scaled) + self.cfg.timeout_margin
    }

    fn drain_client(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            self.on_client_event(ev, now);
        }
    }

    fn on_client_event(&mut self, ev: ClientEvent, now: Instant) {
        if let ClientEvent::Status(r) = &ev {
            self.position = Some(r.position);
            self.machine = Some(r.state);
        }
        if let Some((seq, cause)) = self.stop.as_mut() {
            // While stopping, only the sequence listens (ALARM:3 after the reset is expected).
            let cause = *cause;
            if let Some(out) = seq.handle_event(&ev, &mut self.client, now) {
                self.finish_stop(out, cause, now);
            }
            return;
        }
        match ev {
            ClientEvent::Status(r) => self.on_status(r.state, r.position, now),
            ClientEvent::Ok(tag) => {
                if let Some(a) = self.active.as_mut()
                    && a.phase == Phase::Sent(tag)
                {
                    a.phase = Phase::Acked;
                }
            }
            ClientEvent::Error { tag, code } => {
                if self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.phase == Phase::Sent(tag))
                {
                    self.abort(AlarmKind::CommandError(code), false, now);
                } else {
                    warn!("fluidnc: error:{} for a line not ours", code);
                }
            }
            ClientEvent::Dropped(tag) => {
                if self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.phase == Phase::Sent(tag))
                {
                    self.abort(AlarmKind::ControllerReset, false, now);
                }
            }
            ClientEvent::Alarm(code) => {
                if self.active.is_some() {
                    self.abort(AlarmKind::MachineAlarm(code), false, now);
                } else {
                    self.raise(AlarmKind::MachineAlarm(code));
                    self.alarm = Some(AlarmKind::MachineAlarm(code));
                    self.led = LedPattern::Alarm;
                }
            }
            ClientEvent::Reset => {
                if self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.phase != Phase::Syncing)
                {
                    self.abort(AlarmKind::ControllerReset, false, now);
                }
            }
        }
    }

    fn on_status(&mut self, state: MachineState, pos: PerPump, now: Instant) {
        let timeout = match &self.active {
            Some(a) => self.timeout_for(a.plan.expected),
            None => return,
        };
        let ml_per_mm = self.cfg.ml_per_mm;
        let progress_interval = self.cfg.progress_interval;
        let Some(a) = self.active.as_mut() else {
            return;
        };
        match a.phase {
            Phase::Syncing => {
                if state != MachineState::Idle {
                    self.abort(AlarmKind::NotIdle(state), false, now);
                    return;
                }
                a.start = pos;
                match self.client.send_line(&a.plan.line) {
                    Ok(tag) => {
                        debug!("dispense {}: sent", a.id);
                        a.phase = Phase::Sent(tag);
                        a.started_at = now;
                        a.last_progress = now;
                        a.deadline = now + timeout;
                    }
                    Err(_) => self.abort(AlarmKind::CommandError(0), false, now),
                }
            }
            Phase::Sent(_) | Phase::Acked => {
                a.update(&pos, &ml_per_mm);
                match state {
                    MachineState::Idle => {
                        if a.phase == Phase::Acked && (a.seen_motion || a.reached(&pos)) {
                            self.complete(now);
                        }
                    }
                    MachineState::Alarm => self.abort(AlarmKind::NotIdle(state), false, now),
                    _ => {
                        a.seen_motion = true;
                        if now.saturating_since(a.last_progress) >= progress_interval {
                            a.last_progress = now;
                            let ev = PumpEvent::DispenseProgress {
                                id: a.id,
                                dispensed_ml: a.dispensed,
                            };
                            self.push(ev);
                        }
                    }
                }
            }
        }
    }

    fn complete(&mut self, now: Instant) {
        let Some(a) = self.active.take() else { return };
        self.next_poll = None;
        for i in 0..PUMPS {
            self.totals[i] += a.dispensed[i];
        }
        let duration_ms = now
            .saturating_since(a.started_at)
            .as_millis()
            .min(u32::MAX as u64) as u32;
        info!("dispense {}: complete in {} ms", a.id, duration_ms);
        self.push(PumpEvent::DispenseComplete {
            id: a.id,
            dispensed_ml: a.dispensed,
            duration_ms,
        });
        if let Some(run) = self.recipe.as_mut() {
            run.step += 1;
            let name = run.recipe.name.clone();
            match run.recipe.steps.get(run.step).cloned() {
                Some(step) => {
                    let index = run.step as u8;
                    match plan(&step.doses, &self.cfg) {
                        Ok(p) => {
                            self.push(PumpEvent::RecipeStep { name, step: index });
                            self.start_plan(p, now);
                            return;
                        }
                        Err(e) => {
                            // Checked at start; only a calibration change could get here.
                            self.recipe = None;
                            self.push(PumpEvent::Rejected(e));
                            self.push(PumpEvent::RecipeAborted { name, step: index });
                        }
                    }
                }
                None => {
                    self.recipe = None;
                    self.push(PumpEvent::RecipeComplete { name });
                }
            }
        }
        self.settle(Reason::DispenseFinished);
    }

    /// Abort the active dose with `kind`. With `stop_motion`, the motion is cancelled first
    /// and the abort is reported when the stop sequence ends; otherwise at once.
    fn abort(&mut self, kind: AlarmKind, stop_motion: bool, now: Instant) {
        self.raise(kind);
        if stop_motion {
            self.start_stop(StopCause::Fault(kind), now);
            return;
        }
        self.finish_abort(AbortCause::Alarm(kind), None);
        self.alarm = Some(kind);
        self.led = LedPattern::Alarm;
        self.settle(Reason::MachineAlarm);
    }

    fn raise(&mut self, kind: AlarmKind) {
        error!("motion alarm: {}", kind.event_type());
        self.push(PumpEvent::Alarm(kind));
    }

    /// Report the active dose (if any) and the recipe as aborted.
    fn finish_abort(&mut self, cause: AbortCause, position: Option<PerPump>) {
        self.next_poll = None;
        if let Some(mut a) = self.active.take() {
            if let (Some(pos), Phase::Sent(_) | Phase::Acked) = (position, a.phase) {
                a.update(&pos, &self.cfg.ml_per_mm);
            }
            for i in 0..PUMPS {
                self.totals[i] += a.dispensed[i];
            }
            self.aborted = a.dispensed;
            self.push(PumpEvent::DispenseAborted {
                id: a.id,
                dispensed_ml: a.dispensed,
                cause,
            });
        }
        if let Some(run) = self.recipe.take() {
            self.push(PumpEvent::RecipeAborted {
                name: run.recipe.name,
                step: run.step as u8,
            });
        }
    }

    fn start_stop(&mut self, cause: StopCause, now: Instant) {
        let seq = StopSequence::start(&mut self.client, self.cfg.stop, now);
        self.stop = Some((seq, cause));
    }

    fn finish_stop(&mut self, out: StopOutcome, cause: StopCause, now: Instant) {
        let _ = now;
        self.stop = None;
        if let Some(p) = out.position {
            self.position = Some(p);
        }
        let why = match cause {
            StopCause::Emergency(trigger) => {
                AbortCause::Alarm(AlarmKind::EmergencyStop { trigger })
            }
            StopCause::Fault(k) => AbortCause::Alarm(k),
            StopCause::User => AbortCause::Stopped,
        };
        self.finish_abort(why, out.position);
        if !out.confirmed {
            self.raise(AlarmKind::StopUnconfirmed);
        }
        match cause {
            StopCause::Emergency(_) => {} // latched until resume
            StopCause::Fault(k) => {
                self.alarm = Some(k);
                self.led = LedPattern::Alarm;
                self.settle(Reason::MachineAlarm);
            }
            StopCause::User => self.settle(Reason::DispenseFinished),
        }
        info!("motion: stop sequence done");
    }

    /// Nothing runs any more: governor and LEDs back to rest (the governor refuses to leave
    /// `EMERGENCY` here, by design).
    fn settle(&mut self, reason: Reason) {
        if self.active.is_some() || self.recipe.is_some() {
            return;
        }
        self.gov.request(Priority::Idle, reason);
        if !self.emergency && self.alarm.is_none() {
            self.led = LedPattern::Idle;
        }
    }

    fn push(&mut self, ev: PumpEvent) {
        if self.events.is_full() {
            let mut dropped = false;
            self.events.retain(|e| {
                if !dropped && !e.is_emergency() {
                    dropped = true;
                    false
                } else {
                    true
                }
            });
            self.events_dropped = self.events_dropped.wrapping_add(1);
        }
        if self.events.push_back(ev).is_err() {
            // Every buffered event is an emergency one; the new event is the one lost.
            self.events_dropped = self.events_dropped.wrapping_add(1);
        }
    }

    fn push_front(&mut self, ev: PumpEvent) {
        if self.events.is_full() {
            let _ = self.events.pop_back();
            self.events_dropped = self.events_dropped.wrapping_add(1);
        }
        let _ = self.events.push_front(ev);
    }
}

// ---------------------------------------------------------------------------------------------
// The runner

/// Capacity of [`MotionChannels::commands`].
pub const COMMAND_QUEUE: usize = 8;
/// Capacity of [`MotionChannels::events`].
pub const EVENT_QUEUE: usize = 32;
/// Receivers [`MotionChannels::snapshot`] can have (status publisher, WebSocket feed, LEDs, UI).
pub const SNAPSHOT_RECEIVERS: usize = 4;

/// How other tasks talk to the motion task. `const`-constructible, so it can be a `static`.
pub struct MotionChannels<M: RawMutex> {
    /// Requests in. Full policy [`FullPolicy::RejectNew`]: senders use `offer` and answer "busy"
    /// when refused.
    pub commands: Queue<M, MotionCommand, COMMAND_QUEUE>,
    /// Events out. Full policy [`FullPolicy::DropOldest`] (counted in the queue's stats): the
    /// outbox drains it quickly, and when it does not, the newest news matters most.
    pub events: Queue<M, PumpEvent, EVENT_QUEUE>,
    /// The E-stop edge. The button's handler (or [`EstopButton`](super::estop::EstopButton)
    /// sampler) signals here; the task checks it before anything else and between UART chunks.
    pub estop: Signal<M, EstopTrigger>,
    /// The latest snapshot, sent whenever it changes.
    pub snapshot: Watch<M, MotionSnapshot, SNAPSHOT_RECEIVERS>,
}

impl<M: RawMutex> Default for MotionChannels<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: RawMutex> MotionChannels<M> {
    /// Empty channels.
    pub const fn new() -> Self {
        MotionChannels {
            commands: Queue::new(FullPolicy::RejectNew),
            events: Queue::new(FullPolicy::DropOldest),
            estop: Signal::new(),
            snapshot: Watch::new(),
        }
    }
}

/// The motion task: [`PumpMotion`] over a UART (`rx`, `tx` halves) and a [`Clock`].
///
/// `rx.read` is raced against the other inputs and dropped when one of them wins, so the
/// platform's read MUST be cancel-safe (no byte lost when the future is dropped), as esp-hal's
/// and embassy's buffered UARTs are.
pub struct MotionTask<'a, M: RawMutex, const W: usize, R, T, C> {
    core: PumpMotion<'a, M, W>,
    rx: R,
    tx: T,
    clock: C,
    channels: &'a MotionChannels<M>,
    last_snapshot: Option<MotionSnapshot>,
}

impl<'a, M, const W: usize, R, T, C> MotionTask<'a, M, W, R, T, C>
where
    M: RawMutex,
    R: Read,
    T: Write,
    C: Clock,
{
    /// A task around `core`.
    pub fn new(
        core: PumpMotion<'a, M, W>,
        rx: R,
        tx: T,
        clock: C,
        channels: &'a MotionChannels<M>,
    ) -> Self {
        MotionTask {
            core,
            rx,
            tx,
            clock,
            channels,
            last_snapshot: None,
        }
    }

    /// The core (e.g. to load recipes before running).
    pub fn core_mut(&mut self) -> &mut PumpMotion<'a, M, W> {
        &mut self.core
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        let mut buf = [0u8; 64];
        loop {
            self.flush().await;
            let deadline = self.core.poll_timeout().unwrap_or(Instant::MAX);
            let input = select4(
                self.channels.estop.wait(),
                self.rx.read(&mut buf),
                self.channels.commands.receive(),
                self.clock.sleep_until(deadline),
            )
            .await;
            let now = self.clock.now();
            match input {
                Either4::First(trigger) => self.core.estop(trigger, now),
                Either4::Second(Ok(n)) if n > 0 => {
                    self.core.handle_bytes(buf.get(..n).unwrap_or(&[]), now)
                }
                Either4::Second(_) => {
                    // A UART error or end of stream: note it and back off a little so a
                    // persistent fault cannot spin the task.
                    warn!("motion: uart read failed");
                    self.clock.sleep(Duration::from_millis(1)).await;
                }
                Either4::Third(cmd) => {
                    let _ = self.core.handle_command(cmd, now);
                }
                Either4::Fourth(()) => self.core.handle_timeout(now),
            }
        }
    }

    /// Write what the core has to say. An E-stop that arrives meanwhile is taken between
    /// chunks, so its `!` waits for at most one chunk (≤ 128 bytes, ~11 ms at 115200 baud).
    async fn flush(&mut self) {
        let mut wrote = false;
        loop {
            if let Some(trigger) = self.channels.estop.try_take() {
                self.core.estop(trigger, self.clock.now());
            }
            let Some(chunk) = self.core.poll_transmit() else {
                break;
            };
            if self.tx.write_all(chunk.bytes()).await.is_err() {
                warn!("motion: uart write failed");
            }
            wrote = true;
        }
        // Hand the events over before waiting for the wire: an E-stop's alarm must be queued
        // before anything else can react to the governor's change (its `!` is already written),
        // or the status publisher's EMERGENCY status would reach the broker first.
        self.publish();
        if wrote && self.tx.flush().await.is_err() {
            warn!("motion: uart flush failed");
        }
    }

    fn publish(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            let _ = self.channels.events.offer(ev);
        }
        let snap = self.core.snapshot();
        if self.last_snapshot != Some(snap) {
            self.last_snapshot = Some(snap);
            self.channels.snapshot.sender().send(snap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use proptest::prelude::*;

    type Gov = Governor<NoopRawMutex, 1>;
    type Motion<'g> = PumpMotion<'g, NoopRawMutex, 1>;

    const BANNER: &str = "\nGrbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]\n";

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn dose(pump: Pump, volume_ml: f32, flow_ml_min: f32) -> DispenseRequest {
        DispenseRequest {
            pump,
            volume_ml,
            flow_ml_min,
        }
    }

    fn wire(m: &mut Motion<'_>) -> std::string::String {
        let mut out = std::vec::Vec::new();
        while let Some(t) = m.poll_transmit() {
            out.extend_from_slice(t.bytes());
        }
        out.iter()
            .map(|&b| if b == 0x18 { '^' } else { b as char })
            .collect()
    }

    fn events(m: &mut Motion<'_>) -> std::vec::Vec<PumpEvent> {
        core::iter::from_fn(|| m.poll_event()).collect()
    }

    fn feed(m: &mut Motion<'_>, text: &str, now: Instant) {
        m.handle_bytes(text.as_bytes(), now);
    }

    fn report(state: &str, x: f32, y: f32) -> std::string::String {
        std::format!("<{state}|MPos:{x:.3},{y:.3},0.000,0.000|FS:0,0>\n")
    }

    /// A core whose 1 ml / 6 ml/min dose on X (20 mm at 120 mm/min, 10 s) has been sent and
    /// acknowledged, starting from X = 0.
    #[track_caller]
    fn dispensing_x(gov: &Gov) -> Motion<'_> {
        let mut m = Motion::new(gov, MotionConfig::default());
        m.dispense(&[dose(Pump::X, 1.0, 6.0)], ms(0)).unwrap();
        assert_eq!(wire(&mut m), "?");
        feed(&mut m, &report("Idle", 0.0, 0.0), ms(10));
        assert_eq!(wire(&mut m), "G91 G1 X20.000 F120.000\n");
        feed(&mut m, "ok\n", ms(20));
        let _ = events(&mut m);
        m
    }

    #[test]
    fn volume_and_flow_become_an_incremental_move_with_the_calibration() {
        let p = plan(&[dose(Pump::Y, 2.5, 3.0)], &MotionConfig::default()).unwrap();
        assert_eq!(p.line.as_str(), "G91 G1 Y50.000 F60.000");
        assert_eq!(p.expected, Duration::from_secs(50));
        assert!(p.clamps.is_empty());
    }

    #[test]
    fn a_feed_above_the_axis_maximum_is_clamped_and_reported() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        m.dispense(&[dose(Pump::Z, 1.0, 20.0)], ms(0)).unwrap(); // 400 mm/min asked
        let ev = events(&mut m);
        assert_eq!(
            ev[0],
            PumpEvent::RateClamped {
                pump: Pump::Z,
                requested_mm_min: 400.0,
                applied_mm_min: 200.0
            }
        );
        feed(&mut m, &report("Idle", 0.0, 0.0), ms(1));
        assert_eq!(wire(&mut m), "?G91 G1 Z20.000 F200.000\n");
    }

    #[test]
    fn several_pumps_share_one_move_paced_by_the_slowest() {
        // X: 20 mm at 120 mm/min (10 s); Y: 15 mm at 180 mm/min (5 s) -> both take 10 s.
        let p = plan(
            &[dose(Pump::X, 1.0, 6.0), dose(Pump::Y, 0.75, 9.0)],
            &MotionConfig::default(),
        )
        .unwrap();
        assert_eq!(p.line.as_str(), "G91 G1 X20.000 Y15.000 F150.000");
        assert_eq!(p.expected, Duration::from_secs(10));
        assert!((p.flow_ml_min[1] - 4.5).abs() < 1e-4, "{:?}", p.flow_ml_min);
        assert_eq!(
            plan(
                &[dose(Pump::X, 1.0, 6.0), dose(Pump::X, 1.0, 6.0)],
                &MotionConfig::default()
            ),
            Err(DispenseError::DuplicatePump)
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let cfg = MotionConfig::default();
        assert_eq!(plan(&[], &cfg), Err(DispenseError::NoDoses));
        assert_eq!(
            plan(&[dose(Pump::X, -1.0, 6.0)], &cfg),
            Err(DispenseError::InvalidVolume)
        );
        assert_eq!(
            plan(&[dose(Pump::X, 1.0, f32::NAN)], &cfg),
            Err(DispenseError::InvalidFlow)
        );
        assert_eq!(
            plan(&[dose(Pump::X, 1e9, 6.0)], &cfg),
            Err(DispenseError::TooLarge)
        );
        assert_eq!(
            plan(&[dose(Pump::X, 0.00001, 6.0)], &cfg),
            Err(DispenseError::InvalidVolume)
        );
    }

    #[test]
    fn dispense_completes_on_idle_after_run_and_governs_priority() {
        let gov = Gov::new();
        let mut m = dispensing_x(&gov);
        assert_eq!(gov.get(), Priority::Dispensing);
        assert_eq!(m.led_pattern(), LedPattern::Dispensing);
        feed(&mut m, &report("Run", 10.0, 0.0), ms(5_000));
        assert!(m.is_busy());
        feed(&mut m, &report("Idle", 20.0, 0.0), ms(10_100));
        let ev = events(&mut m);
        assert!(
            ev.contains(&PumpEvent::DispenseComplete {
                id: 1,
                dispensed_ml: [1.0, 0.0, 0.0, 0.0],
                duration_ms: 10_090,
            }),
            "{ev:?}"
        );
        assert!(!m.is_busy());
        assert_eq!(gov.get(), Priority::Idle);
        assert_eq!(m.snapshot().pumps[0].dispensed_ml, 1.0);
    }

    #[test]
    fn a_stale_idle_before_the_move_starts_does_not_complete_it() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        m.dispense(&[dose(Pump::X, 1.0, 6.0)], ms(0)).unwrap();
        feed(&mut m, &report("Idle", 0.0, 0.0), ms(10));
        let _ = wire(&mut m);
        // Pushed before the controller started the move: before and after the `ok`.
        feed(&mut m, &report("Idle", 0.0, 0.0), ms(12));
        feed(&mut m, "ok\n", ms(15));
        feed(&mut m, &report("Idle", 0.0, 0.0), ms(16));
        assert!(m.is_busy(), "a stale Idle must not complete the dose");
        assert!(
            !events(&mut m)
                .iter()
                .any(|e| matches!(e, PumpEvent::DispenseComplete { .. }))
        );
        feed(&mut m, &report("Run", 1.0, 0.0), ms(500));
        feed(&mut m, &report("Idle", 20.0, 0.0), ms(10_100));
        assert!(!m.is_busy());
    }

    #[test]
    fn a_short_move_never_seen_running_completes_at_its_target() {
        let gov = Gov::new();
        let mut m = dispensing_x(&gov);
        feed(&mut m, &report("Idle", 20.0, 0.0), ms(10_050));
        assert!(!m.is_busy());
    }

    #[test]
    fn a_dispense_whose_idle_never_comes_raises_an_alarm_at_the_timeout() {
        let gov = Gov::new();
        let mut m = dispensing_x(&gov);
        // 10 s expected -> 15 s + 3 s margin after the line went out at 10 ms.
        let deadline = ms(10) + Duration::from_secs(18);
        let mut now = ms(20);
        let mut alarm_at = None;
        while alarm_at.is_none() {
            now = m.poll_timeout().expect("a deadline while dispensing");
            assert!(now <= deadline, "no alarm by the deadline");
            m.handle_timeout(now);
            let out = wire(&mut m);
            if events(&mut m).contains(&PumpEvent::Alarm(AlarmKind::DispenseTimeout)) {
                alarm_at = Some(now);
                assert!(out.starts_with('!'), "the motion is stopped: {out:?}");
            } else {
                assert_eq!(out, "?", "only status polls while waiting");
                feed(&mut m, &report("Run", 5.0, 0.0), now);
            }
        }
        assert_eq!(alarm_at, Some(deadline));
        // The stop sequence cancels the motion and reports the abort with what was pumped.
        for line in [
            &report("Hold:0", 6.0, 0.0),
            BANNER,
            "ok\n",
            &report("Idle", 6.0, 0.0),
        ] {
            feed(&mut m, line, now);
            let _ = wire(&mut m);
        }
        let ev = events(&mut m);
        assert!(
            ev.contains(&PumpEvent::DispenseAborted {
                id: 1,
                dispensed_ml: [0.3, 0.0, 0.0, 0.0],
                cause: AbortCause::Alarm(AlarmKind::DispenseTimeout),
            }),
            "{ev:?}"
        );
        assert_eq!(gov.get(), Priority::Idle);
        assert_eq!(m.led_pattern(), LedPattern::Alarm);
        assert_eq!(
            m.dispense(&[dose(Pump::X, 1.0, 6.0)], now),
            Err(DispenseError::AlarmLatched)
        );
    }

    #[test]
    fn an_error_response_aborts_the_dispense_with_an_alarm() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        m.dispense(&[dose(Pump::X, 1.0, 6.0)], ms(0)).unwrap();
        feed(&mut m, &report("Idle", 0.0, 0.0), ms(10));
        let _ = wire(&mut m);
        feed(&mut m, "error:9\n[MSG:ERR: G-code locked out]\n", ms(20));
        let ev = events(&mut m);
        assert!(ev.contains(&PumpEvent::Alarm(AlarmKind::CommandError(9))));
        assert!(ev.iter().any(|e| matches!(
            e,
            PumpEvent::DispenseAborted {
                cause: AbortCause::Alarm(AlarmKind::CommandError(9)),
                ..
            }
        )));
        assert!(!m.is_busy());
        assert_eq!(gov.get(), Priority::Idle);
        // Resume unlocks the controller.
        m.resume(ms(30)).unwrap();
        assert_eq!(wire(&mut m), "$X\n");
    }

    #[test]
    fn a_machine_alarm_aborts_the_dispense() {
        let gov = Gov::new();
        let mut m = dispensing_x(&gov);
        feed(&mut m, &report("Run", 4.0, 0.0), ms(2_000));
        feed(
            &mut m,
            "[MSG:INFO: ALARM: Hard Limit]\nALARM:1\n",
            ms(2_100),
        );
        let ev = events(&mut m);
        assert!(ev.contains(&PumpEvent::Alarm(AlarmKind::MachineAlarm(1))));
        assert!(ev.contains(&PumpEvent::DispenseAborted {
            id: 1,
            dispensed_ml: [0.2, 0.0, 0.0, 0.0],
            cause: AbortCause::Alarm(AlarmKind::MachineAlarm(1)),
        }));
        assert!(!m.is_busy());
    }

    #[test]
    fn estop_leaves_no_remaining_motion_and_resume_reports_what_was_dispensed() {
        let gov = Gov::new();
        let mut m = dispensing_x(&gov);
        feed(&mut m, &report("Run", 8.0, 0.0), ms(4_000));
        let _ = events(&mut m);
        m.estop(EstopTrigger::Button, ms(4_001));
        let mut out = wire(&mut m);
        assert!(out.starts_with('!'), "{out:?}");
        assert_eq!(gov.get(), Priority::Emergency);
        assert_eq!(m.led_pattern(), LedPattern::Emergency);
        assert_eq!(
            m.poll_event(),
            Some(PumpEvent::Alarm(AlarmKind::EmergencyStop {
                trigger: EstopTrigger::Button
            }))
        );
        feed(&mut m, &report("Hold:1", 8.05, 0.0), ms(4_010));
        feed(&mut m, &report("Hold:0", 8.06, 0.0), ms(4_040));
        out += &wire(&mut m);
        feed(&mut m, BANNER, ms(4_050));
        out += &wire(&mut m);
        feed(&mut m, "[MSG:INFO: Caution: Unlocked]\nok\n", ms(4_060));
        out += &wire(&mut m);
        feed(&mut m, &report("Idle", 8.06, 0.0), ms(4_070));
        out += &wire(&mut m);
        assert_eq!(out, "!?^$X\n?");
        let ev = events(&mut m);
        assert!(ev.iter().any(|e| matches!(
            e,
            PumpEvent::DispenseAborted {
                cause: AbortCause::Alarm(AlarmKind::EmergencyStop { .. }),
                ..
            }
        )));
        // A dose finishing meanwhile cannot leave EMERGENCY; only resume does.
        assert_eq!(gov.get(), Priority::Emergency);
        assert_eq!(
            m.dispense(&[dose(Pump::X, 1.0, 6.0)], ms(5_000)),
            Err(DispenseError::Emergency)
        );
        m.resume(ms(6_000)).unwrap();
        assert_eq!(gov.get(), Priority::Idle);
        let ev = events(&mut m);
        match &ev[..] {
            [PumpEvent::Resumed { dispensed_ml }] => {
                assert!((dispensed_ml[0] - 0.403).abs() < 1e-4, "{dispensed_ml:?}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(wire(&mut m), "", "resume sends nothing, no `~`");
        assert_eq!(m.led_pattern(), LedPattern::Idle);
    }

    #[test]
    fn the_emergency_alarm_goes_ahead_of_buffered_events() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        m.dispense(&[dose(Pump::X, 1.0, 60.0)], ms(0)).unwrap(); // clamp + started events
        m.estop(EstopTrigger::Remote, ms(1));
        assert!(m.poll_event().is_some_and(|e| e.is_emergency()));
    }

    #[test]
    fn resume_is_refused_while_the_stop_sequence_runs() {
        let gov = Gov::new();
        let mut m = dispensing_x(&gov);
        m.estop(EstopTrigger::Button, ms(100));
        assert_eq!(m.resume(ms(101)), Err(DispenseError::Stopping));
    }

    fn recipe(name: &str, steps: &[&[DispenseRequest]]) -> Recipe {
        Recipe {
            name: RecipeName::try_from(name).unwrap(),
            steps: steps
                .iter()
                .map(|d| RecipeStep {
                    doses: Vec::from_slice(d).unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_recipe_runs_its_steps_in_order_and_completes() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        m.recipes_mut()
            .insert(recipe(
                "mix",
                &[&[dose(Pump::X, 0.5, 6.0)], &[dose(Pump::Y, 0.25, 6.0)]],
            ))
            .unwrap();
        m.start_recipe("mix", ms(0)).unwrap();
        feed(&mut m, &report("Idle", 0.0, 0.0), ms(1));
        assert_eq!(wire(&mut m), "?G91 G1 X10.000 F120.000\n");
        feed(&mut m, "ok\n", ms(2));
        feed(&mut m, &report("Run", 5.0, 0.0), ms(2_000));
        feed(&mut m, &report("Idle", 10.0, 0.0), ms(5_000));
        assert_eq!(
            gov.get(),
            Priority::Dispensing,
            "still dispensing between steps"
        );
        feed(&mut m, &report("Idle", 10.0, 0.0), ms(5_010));
        assert_eq!(wire(&mut m), "?G91 G1 Y5.000 F120.000\n");
        feed(&mut m, "ok\n", ms(5_020));
        feed(&mut m, &report("Run", 10.0, 1.0), ms(6_000));
        feed(&mut m, &report("Idle", 10.0, 5.0), ms(7_600));
        let names: std::vec::Vec<_> = events(&mut m)
            .into_iter()
            .filter_map(|e| match e {
                PumpEvent::RecipeStarted { .. } => Some("started"),
                PumpEvent::RecipeStep { step: 0, .. } => Some("step0"),
                PumpEvent::RecipeStep { step: 1, .. } => Some("step1"),
                PumpEvent::DispenseComplete { .. } => Some("done"),
                PumpEvent::RecipeComplete { .. } => Some("complete"),
                _ => None,
            })
            .collect();
        assert_eq!(
            names,
            ["started", "step0", "done", "step1", "done", "complete"]
        );
        assert_eq!(gov.get(), Priority::Idle);
    }

    #[test]
    fn the_recipe_table_refuses_a_new_name_when_full_and_replaces_same_names() {
        let mut t: RecipeTable<2> = RecipeTable::new();
        t.insert(recipe("a", &[])).unwrap();
        t.insert(recipe("b", &[])).unwrap();
        assert_eq!(t.insert(recipe("c", &[])), Err(DispenseError::TableFull));
        assert!(
            t.insert(recipe("a", &[&[dose(Pump::A, 1.0, 1.0)]]))
                .unwrap()
                .is_some()
        );
        assert_eq!(t.get("a").unwrap().steps.len(), 1);
        assert!(t.remove("b").is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unknown_and_empty_recipes_are_refused() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        m.recipes_mut().insert(recipe("empty", &[])).unwrap();
        assert_eq!(
            m.handle_command(
                MotionCommand::StartRecipe(RecipeName::try_from("nope").unwrap()),
                ms(0)
            ),
            Err(DispenseError::UnknownRecipe)
        );
        assert_eq!(
            m.start_recipe("empty", ms(0)),
            Err(DispenseError::EmptyRecipe)
        );
        assert_eq!(
            events(&mut m),
            [PumpEvent::Rejected(DispenseError::UnknownRecipe)]
        );
    }

    #[test]
    fn a_machine_not_idle_at_start_refuses_to_move() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        m.dispense(&[dose(Pump::X, 1.0, 6.0)], ms(0)).unwrap();
        feed(&mut m, &report("Alarm", 0.0, 0.0), ms(10));
        assert_eq!(wire(&mut m), "?");
        assert!(
            events(&mut m).contains(&PumpEvent::Alarm(AlarmKind::NotIdle(MachineState::Alarm)))
        );
        assert!(!m.is_busy());
    }

    /// A small stand-in for FluidNC, enough to check motion outcomes: a move queue that a feed
    /// hold suspends (`Hold:0`), `~` resumes, and a soft reset flushes.
    struct FakeFluidnc {
        pos: [f32; 4],
        remaining: [f32; 4],
        feed_mm_min: f32,
        state: &'static str,
        line: std::vec::Vec<u8>,
        out: std::string::String,
    }

    impl FakeFluidnc {
        fn new() -> Self {
            FakeFluidnc {
                pos: [0.0; 4],
                remaining: [0.0; 4],
                feed_mm_min: 0.0,
                state: "Idle",
                line: std::vec::Vec::new(),
                out: std::string::String::new(),
            }
        }
        fn input(&mut self, bytes: &[u8]) {
            for &b in bytes {
                match b {
                    b'?' => {
                        let p = self.pos;
                        self.out += &std::format!(
                            "<{}|MPos:{:.3},{:.3},{:.3},{:.3}|FS:0,0>\n",
                            self.state,
                            p[0],
                            p[1],
                            p[2],
                            p[3]
                        );
                    }
                    b'!' if self.state == "Run" || self.state == "Idle" => self.state = "Hold:0",
                    b'~' if self.state == "Hold:0" => {
                        self.state = if self.remaining.iter().any(|&r| r > 0.0) {
                            "Run"
                        } else {
                            "Idle"
                        }
                    }
                    0x18 => {
                        self.remaining = [0.0; 4];
                        self.state = "Idle";
                        self.line.clear();
                        self.out += "\nGrbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]\n";
                    }
                    b'\n' => {
                        let line = std::string::String::from_utf8(core::mem::take(&mut self.line))
                            .unwrap();
                        for word in line.split(' ') {
                            let (letter, value) = word.split_at(1);
                            let v: f32 = value.parse().unwrap_or(0.0);
                            match letter {
                                "X" => self.remaining[0] += v,
                                "Y" => self.remaining[1] += v,
                                "Z" => self.remaining[2] += v,
                                "A" => self.remaining[3] += v,
                                "F" => self.feed_mm_min = v,
                                _ => {}
                            }
                        }
                        if self.state == "Idle" && self.remaining.iter().any(|&r| r > 0.0) {
                            self.state = "Run";
                        }
                        self.out += "ok\n";
                    }
                    _ => self.line.push(b),
                }
            }
        }
        fn advance(&mut self, dt: Duration) {
            if self.state != "Run" {
                return;
            }
            let len = sqrt(self.remaining.iter().map(|r| r * r).sum());
            let step = self.feed_mm_min * dt.as_micros() as f32 / 60_000_000.0;
            if step >= len {
                for i in 0..4 {
                    self.pos[i] += self.remaining[i];
                }
                self.remaining = [0.0; 4];
                self.state = "Idle";
            } else {
                for i in 0..4 {
                    let d = self.remaining[i] * step / len;
                    self.pos[i] += d;
                    self.remaining[i] -= d;
                }
            }
        }
    }

    /// Run core and fake together until `until`, in steps of at most 10 ms.
    fn run_with(m: &mut Motion<'_>, fake: &mut FakeFluidnc, now: &mut Instant, until: Instant) {
        loop {
            while let Some(t) = m.poll_transmit() {
                fake.input(t.bytes());
            }
            if !fake.out.is_empty() {
                let out = core::mem::take(&mut fake.out);
                m.handle_bytes(out.as_bytes(), *now);
                continue;
            }
            if *now >= until {
                return;
            }
            let next = m
                .poll_timeout()
                .unwrap_or(until)
                .min(until)
                .min(*now + Duration::from_millis(10))
                .max(*now);
            fake.advance(next - *now);
            *now = next;
            m.handle_timeout(*now);
        }
    }

    #[test]
    fn a_dose_against_the_fake_controller_completes_with_its_volume() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        let mut fake = FakeFluidnc::new();
        let mut now = Instant::ZERO;
        m.dispense(&[dose(Pump::X, 1.0, 6.0), dose(Pump::A, 0.5, 6.0)], now)
            .unwrap();
        run_with(&mut m, &mut fake, &mut now, ms(12_000));
        assert!(!m.is_busy());
        let done = events(&mut m)
            .into_iter()
            .find_map(|e| match e {
                PumpEvent::DispenseComplete { dispensed_ml, .. } => Some(dispensed_ml),
                _ => None,
            })
            .expect("complete");
        assert!(
            (done[0] - 1.0).abs() < 1e-3 && (done[3] - 0.5).abs() < 1e-3,
            "{done:?}"
        );
    }

    #[test]
    fn after_an_estop_no_motion_remains_even_if_the_controller_is_told_to_resume() {
        let gov = Gov::new();
        let mut m = Motion::new(&gov, MotionConfig::default());
        let mut fake = FakeFluidnc::new();
        let mut now = Instant::ZERO;
        m.dispense(&[dose(Pump::X, 1.0, 6.0)], now).unwrap();
        run_with(&mut m, &mut fake, &mut now, ms(4_000));
        assert_eq!(fake.state, "Run");
        m.estop(EstopTrigger::Button, now);
        run_with(&mut m, &mut fake, &mut now, ms(5_000));
        assert!(!m.is_busy(), "stop sequence finished");
        let stopped_at = fake.pos[0];
        assert!(stopped_at > 7.0 && stopped_at < 9.0, "{stopped_at}");
        m.resume(now).unwrap();
        let resumed = events(&mut m)
            .into_iter()
            .find_map(|e| match e {
                PumpEvent::Resumed { dispensed_ml } => Some(dispensed_ml),
                _ => None,
            })
            .expect("resumed");
        assert!((resumed[0] - stopped_at * 0.05).abs() < 1e-3, "{resumed:?}");
        // Even a cycle start on the controller finds nothing left to run.
        fake.input(b"~");
        run_with(&mut m, &mut fake, &mut now, ms(30_000));
        assert_eq!(fake.pos[0], stopped_at);
        assert_eq!(fake.state, "Idle");
        assert_eq!(gov.get(), Priority::Idle);
    }

    mod runner {
        use super::*;
        use crate::pump::test_support::{Pipe, PipeRx, PipeTx, TestClock, contents};
        use core::cell::Cell;
        use embassy_futures::poll_once;

        #[test]
        fn the_task_writes_the_feed_hold_first_when_the_estop_signal_fires() {
            let gov = Gov::new();
            let ch = MotionChannels::<NoopRawMutex>::new();
            let (rx, tx) = (Pipe::default(), Pipe::default());
            let now = Cell::new(0);
            let core = Motion::new(&gov, MotionConfig::default());
            let mut task = MotionTask::new(core, PipeRx(&rx), PipeTx(&tx), TestClock(&now), &ch);
            let run = task.run();
            let mut run = core::pin::pin!(run);
            let mut step = || {
                for _ in 0..4 {
                    assert!(poll_once(run.as_mut()).is_pending());
                }
            };
            assert!(
                ch.commands
                    .offer(MotionCommand::Dispense(
                        Vec::from_slice(&[dose(Pump::X, 1.0, 6.0)]).unwrap()
                    ))
                    .is_queued()
            );
            step();
            assert_eq!(contents(&tx), b"?");
            rx.borrow_mut()
                .extend(report("Idle", 0.0, 0.0).bytes().chain(*b"ok\n"));
            step();
            assert_eq!(contents(&tx), b"?G91 G1 X20.000 F120.000\n");
            tx.borrow_mut().clear();
            ch.estop.signal(EstopTrigger::Button);
            step();
            assert_eq!(tx.borrow().front(), Some(&b'!'));
            assert_eq!(gov.get(), Priority::Emergency);
            let mut events = std::vec::Vec::new();
            while let Some(e) = ch.events.try_receive() {
                events.push(e);
            }
            assert!(events.contains(&PumpEvent::Alarm(AlarmKind::EmergencyStop {
                trigger: EstopTrigger::Button
            })));
            let mut snap = ch.snapshot.receiver().unwrap();
            assert!(snap.try_get().is_some_and(|s| s.emergency));
        }
    }

    proptest! {
        #[test]
        fn plan_never_panics_and_never_exceeds_an_axis_rate(
            v in proptest::collection::vec((0usize..4, any::<f32>(), any::<f32>()), 0..5),
        ) {
            let cfg = MotionConfig::default();
            let doses: std::vec::Vec<_> = v.iter()
                .map(|&(p, vol, flow)| dose(Pump::from_index(p).unwrap(), vol, flow))
                .collect();
            if let Ok(p) = plan(&doses, &cfg) {
                prop_assert!(p.line.len() <= super::super::fluidnc::MAX_LINE);
                for i in 0..PUMPS {
                    let rate = p.flow_ml_min[i] / cfg.ml_per_mm[i];
                    prop_assert!(rate <= cfg.max_rate_mm_min[i] * 1.001, "{rate}");
                }
            }
        }

        #[test]
        fn the_core_survives_arbitrary_controller_bytes_during_a_dispense(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let gov = Gov::new();
            let mut m = dispensing_x(&gov);
            m.handle_bytes(&bytes, ms(100));
            let _ = wire(&mut m);
            let _ = events(&mut m);
            if let Some(t) = m.poll_timeout() {
                m.handle_timeout(t);
            }
        }
    }
}
