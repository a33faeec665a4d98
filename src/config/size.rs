//! Sizes in bytes as people write them: `65536`, `64k`, `64KiB`, `1M`, `1MiB`, `2G`.
//! Every suffix is binary (`k` = `KiB` = 1024); `KB`, `MB` and `GB` are refused rather
//! than guessed at, since tools disagree on whether they mean 1000 or 1024. Used by the
//! flags, the `COURIER_*` variables and the config file alike ([`serde`] accepts a number
//! or such a string, and writes a number).

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a size such as `64k` or `1MiB` into bytes.
///
/// # Errors
/// A message showing the accepted forms, when `text` is none of them or overflows.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    let hint = "write bytes as a number with an optional suffix k, KiB, M, MiB, G or GiB (all powers of 1024), e.g. 65536, 64k, 1MiB";
    if number.is_empty() {
        return Err(format!("{text:?} is not a size: {hint}"));
    }
    let shift = match suffix.trim() {
        "" | "B" | "b" => 0,
        "k" | "K" | "KiB" | "kiB" | "Ki" => 10,
        "m" | "M" | "MiB" | "Mi" => 20,
        "g" | "G" | "GiB" | "Gi" => 30,
        "KB" | "kB" | "MB" | "GB" => {
            return Err(format!(
                "{text:?}: {} is ambiguous (1000 or 1024?); {hint}",
                suffix.trim()
            ))
        }
        _ => return Err(format!("{text:?} is not a size: {hint}")),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    value
        .checked_mul(1u64 << shift)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Writes a size as a plain number of bytes.
///
/// # Errors
/// Those of the serializer.
pub fn serialize<S: Serializer>(value: &usize, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(*value as u64)
}

/// Reads a size written as a number or a string such as `"64k"`.
///
/// # Errors
/// A serde error with [`parse_size`]'s message.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(u64),
        Text(String),
    }
    match Written::deserialize(deserializer)? {
        Written::Number(n) => usize::try_from(n).map_err(serde::de::Error::custom),
        Written::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_powers_of_1024() {
        for (text, bytes) in [
            ("65536", 65536),
            ("64k", 65536),
            ("64K", 65536),
            ("64KiB", 65536),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("8 MiB", 8 << 20),
            ("2G", 2 << 30),
            ("0", 0),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn ambiguous_or_unknown_forms_are_refused_with_the_accepted_ones() {
        for text in ["64KB", "1MB", "abc", "", "k", "1.5M", "-1", "1T"] {
            let err = parse_size(text).unwrap_err();
            assert!(err.contains("KiB"), "{text}: {err}");
        }
        assert!(parse_size("99999999999999999999").is_err());
    }
}
