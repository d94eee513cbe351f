//! Unix cron syntax, translated into the syntax of the `cron` crate.
//!
//! Invariants:
//! - Accepted: 5 fields (`minute hour day-of-month month day-of-week`), 6 fields (a seconds
//!   field first), or one of the macros `@yearly` (`@annually`), `@monthly`, `@weekly`,
//!   `@daily` (`@midnight`) and `@hourly`, which mean what they mean in Vixie cron
//!   (`@weekly` is Sunday 00:00). Anything else (`@reboot`, 4 or 7 fields) is refused here,
//!   with a message that says what is accepted.
//! - Day-of-week follows Unix cron (0 and 7 are Sunday, 1 is Monday; names work too); the
//!   `cron` crate counts Sunday as 1, so numbers are rewritten as names, which both read alike.
//! - An expression restricting both day-of-month and day-of-week is refused: Unix cron fires
//!   when *either* matches, most other implementations when *both* do, and a protection
//!   schedule must not be ambiguous.
//! - The output always has exactly 6 fields, seconds first; field contents other than
//!   day-of-week numbers pass through unchanged and are judged by the `cron` crate. When it
//!   refuses them, [`bad_field`] names the field at fault in the operator's own terms.

use std::str::FromStr;

/// Unix cron -> the `cron` crate's 6-field syntax.
pub(crate) fn translate(expression: &str) -> Result<String, String> {
    let e = expression.trim();
    if e.starts_with('@') {
        return macro_fields(e).map(str::to_string);
    }
    let fields: Vec<&str> = e.split_whitespace().collect();
    let (seconds, rest) = match fields.len() {
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        n => {
            return Err(format!(
                "`{e}` has {n} field{}: a cron expression has 5 (minute hour day-of-month month \
                 day-of-week) or 6 (seconds first)",
                if n == 1 { "" } else { "s" }
            ))
        }
    };
    let [minute, hour, dom, month, dow] = [rest[0], rest[1], rest[2], rest[3], rest[4]];
    let restricted = |f: &str| f != "*" && f != "?";
    if restricted(dom) && restricted(dow) {
        return Err(format!(
            "`{e}` restricts both day-of-month and day-of-week, which cron implementations read \
             differently (either or both); restrict only one of them"
        ));
    }
    let dow = translate_day_of_week(dow)?;
    Ok(format!("{seconds} {minute} {hour} {dom} {month} {dow}"))
}

fn macro_fields(e: &str) -> Result<&'static str, String> {
    Ok(match e {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * Sun",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        _ => {
            return Err(format!(
                "`{e}` is not a schedule macro: use @hourly, @daily, @weekly, @monthly or @yearly"
            ))
        }
    })
}

/// The six fields of the translated syntax: name and accepted values.
const FIELDS: [(&str, &str); 6] = [
    ("seconds", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
];

/// Why the `cron` crate refused `translated` (the translation of `expression`), in the
/// expression's own terms: the first field that, replaced by `*`, makes it parse.
pub(crate) fn bad_field(expression: &str, translated: &str) -> Option<String> {
    let fields: Vec<&str> = translated.split_whitespace().collect();
    let original: Vec<&str> = expression.split_whitespace().collect();
    let parses = |f: &[&str]| cron::Schedule::from_str(&f.join(" ")).is_ok();
    if fields.len() != 6 || !(5..=6).contains(&original.len()) || parses(&fields) {
        return None;
    }
    let offset = 6 - original.len();
    (0..6).find_map(|i| {
        let mut f = fields.clone();
        f[i] = "*";
        if !parses(&f) {
            return None;
        }
        let text = if i >= offset {
            original[i - offset]
        } else {
            fields[i]
        };
        let (name, values) = FIELDS[i];
        Some(format!("its {name} field `{text}` is not valid ({values})"))
    })
}

const DAY_NAMES: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn translate_day_of_week(field: &str) -> Result<String, String> {
    let day = |s: &str| -> Result<String, String> {
        if !s.chars().all(|c| c.is_ascii_digit()) {
            return Ok(s.to_string());
        }
        match s.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(DAY_NAMES[n].to_string()),
            _ => Err(format!(
                "day-of-week `{s}` is out of range: use 0-7 (0 and 7 are Sunday) or a name"
            )),
        }
    };
    let mut items = Vec::new();
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (item, None),
        };
        let base = match base.split_once('-') {
            // `x-7` ends on Sunday, which the cron crate numbers 1: split off the Sunday.
            Some((a, "7")) if step.is_none() => match day(a)?.as_str() {
                "Sun" => "*".to_string(),
                a => format!("{a}-Sat,Sun"),
            },
            Some((a, b)) => format!("{}-{}", day(a)?, day(b)?),
            None => day(base)?,
        };
        items.push(match step {
            Some(s) => format!("{base}/{s}"),
            None => base,
        });
    }
    Ok(items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_get_seconds_and_unix_days_of_week() {
        assert_eq!(translate("30 2 * * *").unwrap(), "0 30 2 * * *");
        assert_eq!(translate(" 0 30 2 * * * ").unwrap(), "0 30 2 * * *");
        assert_eq!(translate("0 3 * * 0").unwrap(), "0 0 3 * * Sun");
        assert_eq!(translate("0 3 * * 1-5").unwrap(), "0 0 3 * * Mon-Fri");
        assert_eq!(translate("0 3 * * 5-7").unwrap(), "0 0 3 * * Fri-Sat,Sun");
        assert_eq!(translate("0 3 * * 0-7").unwrap(), "0 0 3 * * *");
        assert_eq!(translate("0 3 * * 1,3/2").unwrap(), "0 0 3 * * Mon,Wed/2");
        assert_eq!(translate("0 3 * * SAT").unwrap(), "0 0 3 * * SAT");
        assert_eq!(translate("0 3 1 * ?").unwrap(), "0 0 3 1 * ?");
        assert!(translate("0 3 * * 8").unwrap_err().contains("out of range"));
        assert!(translate("0 3 1 * 1")
            .unwrap_err()
            .contains("restricts both"));
        assert!(translate("* * *").unwrap_err().contains("has 3 fields"));
        assert!(translate("*").unwrap_err().contains("has 1 field:"));
    }

    #[test]
    fn the_field_at_fault_is_named_as_written() {
        let bad = |e: &str| bad_field(e, &translate(e).unwrap());
        assert_eq!(
            bad("61 3 * * *").as_deref(),
            Some("its minute field `61` is not valid (0-59)")
        );
        assert_eq!(
            bad("0 3 * 13 *").as_deref(),
            Some("its month field `13` is not valid (1-12 or JAN-DEC)")
        );
        assert_eq!(
            bad("0 3 * * Mon-Fro").as_deref(),
            Some("its day-of-week field `Mon-Fro` is not valid (0-7 or SUN-SAT)")
        );
        assert_eq!(
            bad("75 0 3 * * *").as_deref(),
            Some("its seconds field `75` is not valid (0-59)")
        );
        assert_eq!(
            bad("0 3 * * *"),
            None,
            "a valid expression has no bad field"
        );
    }

    #[test]
    fn macros_expand_to_vixie_cron_meanings() {
        assert_eq!(translate("@daily").unwrap(), "0 0 0 * * *");
        assert_eq!(translate(" @midnight ").unwrap(), "0 0 0 * * *");
        assert_eq!(translate("@weekly").unwrap(), "0 0 0 * * Sun");
        assert_eq!(
            translate("@annually").unwrap(),
            translate("@yearly").unwrap()
        );
        assert_eq!(translate("@hourly").unwrap(), "0 0 * * * *");
        assert_eq!(
            translate("@reboot").unwrap_err(),
            "`@reboot` is not a schedule macro: use @hourly, @daily, @weekly, @monthly or @yearly"
        );
    }
}
