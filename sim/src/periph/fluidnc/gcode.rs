//! The subset of G-code the simulated FluidNC understands, parsed the way Grbl's `gc_execute_line`
//! does: whitespace and comments removed, letters upper-cased, then `letter number` words with
//! Grbl's error numbers for what is wrong.
//!
//! Supported: `G0 G1` (motion), `G4 P<s>` (dwell), `G90 G91` (distance), `G92` / `G92.1` (work
//! offset), `G17 G21 G54 G94` (accepted, the only modes modelled), `M3 M4 M5 M7 M8 M9` (accepted,
//! no spindle or coolant), words `F X Y Z A N P S T`. Everything else is `error:20`.

/// Motion mode (modal group 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MotionMode {
    /// `G0` rapid: the fastest each axis allows.
    Rapid,
    /// `G1` linear feed at `F`.
    Linear,
}

/// Non-modal command (group 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonModal {
    /// `G4 P<seconds>`.
    Dwell,
    /// `G92`: set the work offset so the current position reads as the words given.
    SetOffset,
    /// `G92.1`: clear the work offset.
    ClearOffset,
}

/// One parsed G-code block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Block {
    /// Motion mode word, if given.
    pub motion: Option<MotionMode>,
    /// `Some(true)` for G91 (incremental), `Some(false)` for G90.
    pub incremental: Option<bool>,
    /// Non-modal command, if given.
    pub non_modal: Option<NonModal>,
    /// `F`, mm/min.
    pub feed: Option<f64>,
    /// Axis words X, Y, Z, A.
    pub axes: [Option<f64>; 4],
    /// `P` word.
    pub p: Option<f64>,
}

impl Block {
    /// Whether any axis word is present.
    pub fn has_axes(&self) -> bool {
        self.axes.iter().any(Option::is_some)
    }
}

/// Strip spaces, control bytes and comments (`( … )` and `;` to the end), and upper-case.
pub fn normalize(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_paren = false;
    for &b in raw {
        if in_paren {
            if b == b')' {
                in_paren = false;
            }
            continue;
        }
        match b {
            b'(' => in_paren = true,
            b';' => break,
            b if b <= b' ' || b >= 0x7f => {}
            b => out.push(char::from(b.to_ascii_uppercase())),
        }
    }
    out
}

/// Grbl's `read_float`: an optional sign, digits with at most one `.`, no exponent.
/// Returns the value and the bytes consumed, or `None` when there are no digits.
fn read_number(s: &[u8]) -> Option<(f64, usize)> {
    let mut i = 0;
    if matches!(s.first(), Some(b'-' | b'+')) {
        i = 1;
    }
    let mut digits = 0;
    let mut dot = false;
    while let Some(&c) = s.get(i) {
        if c.is_ascii_digit() {
            digits += 1;
        } else if c == b'.' && !dot {
            dot = true;
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    let text = std::str::from_utf8(s.get(..i)?).ok()?;
    let v: f64 = text.parse().ok()?;
    v.is_finite().then_some((v, i))
}

/// Error codes, Grbl 1.1 numbering (docs/interfaces.md §1.2).
pub mod code {
    /// Expected a command letter.
    pub const EXPECTED_LETTER: u8 = 1;
    /// Bad number format.
    pub const BAD_NUMBER: u8 = 2;
    /// Invalid `$` statement.
    pub const INVALID_STATEMENT: u8 = 3;
    /// Negative value.
    pub const NEGATIVE: u8 = 4;
    /// Setting disabled (`$H` without homing).
    pub const SETTING_DISABLED: u8 = 5;
    /// `$` command needs Idle.
    pub const IDLE_ERROR: u8 = 8;
    /// G-code locked out in Alarm.
    pub const LOCKED: u8 = 9;
    /// Line overflow.
    pub const OVERFLOW: u8 = 11;
    /// Unsupported command.
    pub const UNSUPPORTED: u8 = 20;
    /// Modal group violation.
    pub const MODAL_GROUP: u8 = 21;
    /// Feed rate undefined.
    pub const UNDEFINED_FEED: u8 = 22;
    /// Axis command conflict.
    pub const AXIS_CONFLICT: u8 = 24;
    /// Word repeated.
    pub const WORD_REPEATED: u8 = 25;
    /// No axis words where required.
    pub const NO_AXIS_WORDS: u8 = 26;
    /// Value word missing.
    pub const VALUE_MISSING: u8 = 28;
    /// Unused words.
    pub const UNUSED_WORDS: u8 = 36;

    /// Short text for `[MSG:ERR: …]` with verbose errors.
    pub fn text(code: u8) -> &'static str {
        match code {
            EXPECTED_LETTER => "Expected command letter",
            BAD_NUMBER => "Bad number format",
            INVALID_STATEMENT => "Invalid statement",
            NEGATIVE => "Negative value",
            SETTING_DISABLED => "Setting disabled",
            IDLE_ERROR => "Idle error",
            LOCKED => "Alarm lock",
            OVERFLOW => "Line overflow",
            UNSUPPORTED => "Unsupported command",
            MODAL_GROUP => "Modal group violation",
            UNDEFINED_FEED => "Undefined feed rate",
            AXIS_CONFLICT => "Axis command conflict",
            WORD_REPEATED => "Word repeated",
            NO_AXIS_WORDS => "No axis words",
            VALUE_MISSING => "Value word missing",
            UNUSED_WORDS => "Unused words",
            _ => "Error",
        }
    }
}

/// Parse a normalized line (see [`normalize`]) into a [`Block`], or a Grbl error code.
pub fn parse(line: &str) -> Result<Block, u8> {
    let s = line.as_bytes();
    let mut b = Block::default();
    let mut i = 0;
    let mut modal_seen = [false; 3];
    while i < s.len() {
        let letter = s[i];
        if !letter.is_ascii_uppercase() {
            return Err(code::EXPECTED_LETTER);
        }
        i += 1;
        let (value, used) = read_number(&s[i..]).ok_or(code::BAD_NUMBER)?;
        i += used;
        let repeat = |slot: &Option<f64>| {
            if slot.is_some() {
                Err(code::WORD_REPEATED)
            } else {
                Ok(())
            }
        };
        match letter {
            b'G' => {
                let int = value.trunc();
                let mantissa = ((value - int) * 100.0).round() as i64;
                // Modal groups that can conflict within one line: motion, distance, non-modal.
                // G17, G21, G54 and G94 are the only modes of their groups that exist here.
                let (group, apply): (Option<usize>, fn(&mut Block)) = match (int as i64, mantissa) {
                    (0, 0) => (Some(0), |b| b.motion = Some(MotionMode::Rapid)),
                    (1, 0) => (Some(0), |b| b.motion = Some(MotionMode::Linear)),
                    (90, 0) => (Some(1), |b| b.incremental = Some(false)),
                    (91, 0) => (Some(1), |b| b.incremental = Some(true)),
                    (4, 0) => (Some(2), |b| b.non_modal = Some(NonModal::Dwell)),
                    (92, 0) => (Some(2), |b| b.non_modal = Some(NonModal::SetOffset)),
                    (92, 10) => (Some(2), |b| b.non_modal = Some(NonModal::ClearOffset)),
                    (17 | 21 | 54 | 94, 0) => (None, |_| {}),
                    _ => return Err(code::UNSUPPORTED),
                };
                if let Some(g) = group {
                    if modal_seen[g] {
                        return Err(code::MODAL_GROUP);
                    }
                    modal_seen[g] = true;
                }
                apply(&mut b);
            }
            b'M' => match value as i64 {
                3 | 4 | 5 | 7 | 8 | 9 if value.fract() == 0.0 => {}
                _ => return Err(code::UNSUPPORTED),
            },
            b'F' => {
                repeat(&b.feed)?;
                if value < 0.0 {
                    return Err(code::NEGATIVE);
                }
                b.feed = Some(value);
            }
            b'X' | b'Y' | b'Z' | b'A' => {
                let idx = match letter {
                    b'X' => 0,
                    b'Y' => 1,
                    b'Z' => 2,
                    _ => 3,
                };
                repeat(&b.axes[idx])?;
                b.axes[idx] = Some(value);
            }
            b'P' => {
                repeat(&b.p)?;
                b.p = Some(value);
            }
            b'N' | b'S' | b'T' => {
                if value < 0.0 {
                    return Err(code::NEGATIVE);
                }
            }
            _ => return Err(code::UNSUPPORTED),
        }
    }
    if b.motion.is_some() && b.non_modal == Some(NonModal::SetOffset) && b.has_axes() {
        return Err(code::AXIS_CONFLICT);
    }
    match b.non_modal {
        Some(NonModal::Dwell) => match b.p {
            None => return Err(code::VALUE_MISSING),
            Some(p) if p < 0.0 => return Err(code::NEGATIVE),
            Some(_) => {}
        },
        Some(NonModal::SetOffset) if !b.has_axes() => return Err(code::NO_AXIS_WORDS),
        _ => {
            if b.p.is_some() {
                return Err(code::UNUSED_WORDS);
            }
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_parsed_after_spaces_comments_and_case_are_dropped() {
        let n = normalize(b"g91 g1 x10.5 (pump 1) f300 ; go");
        assert_eq!(n, "G91G1X10.5F300");
        let b = parse(&n).unwrap();
        assert_eq!(b.motion, Some(MotionMode::Linear));
        assert_eq!(b.incremental, Some(true));
        assert_eq!(b.axes[0], Some(10.5));
        assert_eq!(b.feed, Some(300.0));
    }

    #[test]
    fn malformed_lines_get_grbl_error_numbers() {
        for (line, want) in [
            ("1X", code::EXPECTED_LETTER),
            ("GX", code::BAD_NUMBER),
            ("X1.2.3", code::EXPECTED_LETTER),
            ("G2X1", code::UNSUPPORTED),
            ("B1", code::UNSUPPORTED),
            ("G0G1X1", code::MODAL_GROUP),
            ("G90G91", code::MODAL_GROUP),
            ("X1X2", code::WORD_REPEATED),
            ("G92", code::NO_AXIS_WORDS),
            ("G4", code::VALUE_MISSING),
            ("G1P1X1", code::UNUSED_WORDS),
            ("F-1", code::NEGATIVE),
            ("G1G92X1", code::AXIS_CONFLICT),
        ] {
            assert_eq!(parse(line), Err(want), "{line}");
        }
    }
}
