//! Kubernetes resource quantities (`500m`, `1.5Gi`, `1e3`), parsed exactly
//! as `k8s.io/apimachinery/pkg/api/resource.ParseQuantity` does, because
//! the scheduler must see the same numbers Kubernetes would for the same
//! manifest: a pod that fits a node there fits it here.
//!
//! What is reproduced:
//! - the scanner, including its leniencies (`1.`, `.5`, `1.G`, a lone `.`
//!   or `+` meaning zero) and its three error messages;
//! - decimal SI suffixes (`n u m "" k M G T P E`), binary SI suffixes
//!   (`Ki Mi Gi Ti Pi Ei`) and decimal exponents (`e3`, `E-3`, `e+6`);
//! - values kept exactly down to nano units, a finer non-zero value rounded
//!   away from zero (`0.9n` is `1n`, `0.000000000001Ki` is `2n`);
//! - the silent cap of binary SI quantities at 2^63-1 (`9Ei`);
//! - [`Quantity::millis`] and [`Quantity::value`] rounding up (away from
//!   zero), as `MilliValue()` and `Value()` do for the values requests use.
//!
//! Where Kubernetes' int64 accessors overflow into undefined results (a
//! decimal quantity past 2^63-1, such as `10E`, or an exponent beyond 32
//! bits) this module saturates instead, so an absurd request never looks
//! small. Negative values (which validation rejects in requests) round away
//! from zero, as Kubernetes' common int64 path does.

use std::cmp::Ordering;
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Neg};
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

/// The regular expression Kubernetes names when a quantity is malformed.
pub const QUANTITY_REGEX: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// Nano units in one unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Nano units in one milli unit.
const NANOS_PER_MILLI: i128 = 1_000_000;
/// The largest binary SI quantity, in nano units (Kubernetes' `maxAllowed`).
const MAX_BINARY_NANOS: i128 = i64::MAX as i128 * NANOS_PER_UNIT;

/// Why a string is not a quantity; the messages are Kubernetes' own
/// (`ErrFormatWrong`, `ErrNumeric`, `ErrSuffix`), so users can search them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string does not have the shape number-then-suffix.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    FormatWrong,
    /// The numeric part has no digit where Kubernetes needs one.
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    /// The suffix is none of the known ones.
    #[error("unable to parse quantity's suffix")]
    Suffix,
}

/// How a quantity was written, which Kubernetes remembers to print it back
/// the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// `12e6`, `1E-3`.
    DecimalExponent,
    /// `12Mi` (12 * 2^20).
    BinarySI,
    /// `12M` (12 * 10^6), `500m`, or no suffix.
    #[default]
    DecimalSI,
}

/// A parsed quantity: an exact number of nano units (saturating far beyond
/// anything a request or a node can hold) and the format it was written in.
/// Equality and order compare the amounts only, as `Quantity.Cmp` does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

/// Parses a quantity exactly as Kubernetes' `ParseQuantity` does
/// (surrounding whitespace is an error here, as there).
pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
    if s.is_empty() {
        return Err(QuantityError::FormatWrong);
    }
    if s == "0" {
        return Ok(Quantity::default());
    }
    let scanned = scan(s.as_bytes())?;
    let (base, exponent, mut format) = interpret(scanned.suffix).ok_or(QuantityError::Suffix)?;

    // Kubernetes parses the numeric text with inf.Dec only when its int64
    // fast path does not apply; for decimal formats with no digit at all
    // that is exactly when the scale drops below nano, and inf.Dec then
    // finds no digit to parse.
    if !scanned.value.iter().any(u8::is_ascii_digit) && base == 10 && exponent < -9 {
        return Err(QuantityError::Numeric);
    }

    let mut digits: Vec<u8> = scanned
        .num
        .iter()
        .chain(scanned.denom.iter())
        .map(|d| d - b'0')
        .collect();
    let decimal_exponent = if base == 2 {
        for _ in 0..exponent {
            double(&mut digits);
        }
        -(scanned.denom.len() as i64)
    } else {
        exponent.saturating_sub(scanned.denom.len() as i64)
    };
    let mut nanos = round_to_nanos(&digits, decimal_exponent);
    if format == Format::BinarySI {
        nanos = nanos.min(MAX_BINARY_NANOS);
        if nanos > 0 && nanos < NANOS_PER_UNIT {
            // Kubernetes avoids showing a fraction of a binary unit.
            format = Format::DecimalSI;
        }
    }
    if !scanned.positive {
        nanos = -nanos;
    }
    Ok(Quantity { nanos, format })
}

/// Parses a quantity as stored in a Kubernetes object. Surrounding
/// whitespace is ignored, as Kubernetes' JSON decoding of quantities does.
pub fn from_k8s(q: &K8sQuantity) -> Result<Quantity, QuantityError> {
    parse(q.0.trim())
}

/// CPU in millicores, rounded up, as the scheduler and kubelet count it
/// (`MilliValue()`).
pub fn cpu_millis(q: &K8sQuantity) -> Result<i64, QuantityError> {
    from_k8s(q).map(|q| q.millis())
}

/// Memory (or any countable resource) in bytes or units, rounded up
/// (`Value()`).
pub fn memory_bytes(q: &K8sQuantity) -> Result<i64, QuantityError> {
    from_k8s(q).map(|q| q.value())
}

impl Quantity {
    /// A quantity of `n` whole units, for defaults and sums.
    pub fn from_value(n: i64) -> Quantity {
        Quantity {
            nanos: i128::from(n) * NANOS_PER_UNIT,
            format: Format::DecimalSI,
        }
    }

    /// A quantity of `n` thousandths, for CPU defaults in millicores.
    pub fn from_millis(n: i64) -> Quantity {
        Quantity {
            nanos: i128::from(n) * NANOS_PER_MILLI,
            format: Format::DecimalSI,
        }
    }

    /// The value in thousandths (millicores for CPU), rounded up, saturating
    /// at the ends of `i64`.
    pub fn millis(&self) -> i64 {
        saturate(div_away_from_zero(self.nanos, NANOS_PER_MILLI))
    }

    /// The value in units (bytes for memory, a count for pods), rounded up,
    /// saturating at the ends of `i64`.
    pub fn value(&self) -> i64 {
        saturate(div_away_from_zero(self.nanos, NANOS_PER_UNIT))
    }

    /// The exact amount in nano units (Kubernetes' finest precision).
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// How the quantity was written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whether the amount is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Add for Quantity {
    type Output = Quantity;

    /// Adds exactly (saturating); a zero left side takes the right side's
    /// format, as `Quantity.Add` does.
    fn add(self, rhs: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(rhs.nanos),
            format: if self.nanos == 0 {
                rhs.format
            } else {
                self.format
            },
        }
    }
}

impl AddAssign for Quantity {
    fn add_assign(&mut self, rhs: Quantity) {
        *self = *self + rhs;
    }
}

impl Sum for Quantity {
    fn sum<I: Iterator<Item = Quantity>>(iter: I) -> Quantity {
        iter.fold(Quantity::default(), Add::add)
    }
}

impl Neg for Quantity {
    type Output = Quantity;

    fn neg(self) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_neg(),
            format: self.format,
        }
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Quantity, QuantityError> {
        parse(s)
    }
}

impl fmt::Display for Quantity {
    /// Prints the exact amount without a suffix (`1.5`, `0.001`), for logs
    /// and messages; not Kubernetes' canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let units = abs / NANOS_PER_UNIT as u128;
        let frac = abs % NANOS_PER_UNIT as u128;
        if frac == 0 {
            write!(f, "{sign}{units}")
        } else {
            let frac = format!("{frac:09}");
            write!(f, "{sign}{units}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// The pieces Kubernetes' scanner (`parseQuantityString`) cuts a quantity
/// into.
struct Scanned<'a> {
    positive: bool,
    /// The numeric text as inf.Dec would read it (sign included).
    value: &'a [u8],
    /// Integer digits without leading zeros ("0" if there are none).
    num: &'a [u8],
    /// Fraction digits.
    denom: &'a [u8],
    suffix: &'a [u8],
}

/// A port of `parseQuantityString`: it decides what is malformed, so its
/// leniencies are kept on purpose.
fn scan(s: &[u8]) -> Result<Scanned<'_>, QuantityError> {
    const ZERO: &[u8] = b"0";
    let end = s.len();
    let mut out = Scanned {
        positive: true,
        value: &[],
        num: &[],
        denom: &[],
        suffix: &[],
    };
    let mut pos = 0;
    match s.first() {
        Some(b'-') => {
            out.positive = false;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }

    // Leading zeros.
    while pos < end && s[pos] == b'0' {
        pos += 1;
    }
    if pos >= end {
        out.num = ZERO;
        out.value = ZERO;
        return Ok(out);
    }

    // The integer part.
    let start = pos;
    while pos < end && s[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos >= end {
        out.num = &s[start..];
        out.value = s;
        return Ok(out);
    }
    out.num = if pos == start { ZERO } else { &s[start..pos] };

    // The fraction.
    if s[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < end && s[pos].is_ascii_digit() {
            pos += 1;
        }
        out.denom = &s[start..pos];
        if pos >= end {
            out.value = s;
            return Ok(out);
        }
    }
    out.value = &s[..pos];

    // The suffix: letters, then an optional sign and digits to the end.
    let suffix_start = pos;
    while pos < end && b"eEinumkKMGTP".contains(&s[pos]) {
        pos += 1;
    }
    if pos < end && (s[pos] == b'-' || s[pos] == b'+') {
        pos += 1;
    }
    while pos < end && s[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < end {
        return Err(QuantityError::FormatWrong);
    }
    out.suffix = &s[suffix_start..];
    Ok(out)
}

/// The base, exponent and format a suffix stands for (Kubernetes'
/// `suffixHandler.interpret`), or `None` if it is unknown.
fn interpret(suffix: &[u8]) -> Option<(u32, i64, Format)> {
    let decimal = |e| Some((10, e, Format::DecimalSI));
    let binary = |e| Some((2, e, Format::BinarySI));
    match suffix {
        b"n" => decimal(-9),
        b"u" => decimal(-6),
        b"m" => decimal(-3),
        b"" => decimal(0),
        b"k" => decimal(3),
        b"M" => decimal(6),
        b"G" => decimal(9),
        b"T" => decimal(12),
        b"P" => decimal(15),
        b"E" => decimal(18),
        b"Ki" => binary(10),
        b"Mi" => binary(20),
        b"Gi" => binary(30),
        b"Ti" => binary(40),
        b"Pi" => binary(50),
        b"Ei" => binary(60),
        [b'e' | b'E', rest @ ..] if !rest.is_empty() => {
            // Go's strconv.ParseInt: an optional sign, then decimal digits.
            let text = std::str::from_utf8(rest).ok()?;
            let exponent: i64 = text.parse().ok()?;
            Some((10, exponent, Format::DecimalExponent))
        }
        _ => None,
    }
}

/// Multiplies a big-endian vector of decimal digits by two in place.
fn double(digits: &mut Vec<u8>) {
    let mut carry = 0;
    for d in digits.iter_mut().rev() {
        let v = *d * 2 + carry;
        *d = v % 10;
        carry = v / 10;
    }
    if carry > 0 {
        digits.insert(0, carry);
    }
}

/// `digits * 10^exponent` in nano units, rounded away from zero (as
/// Kubernetes rounds to nano precision), saturating at `i128::MAX`.
fn round_to_nanos(digits: &[u8], exponent: i64) -> i128 {
    let first = digits.iter().position(|d| *d != 0);
    let Some(first) = first else {
        return 0;
    };
    let digits = &digits[first..];
    let shift = exponent.saturating_add(9);
    if shift >= 0 {
        // i128::MAX has 39 digits.
        if shift.saturating_add(digits.len() as i64) > 39 {
            return i128::MAX;
        }
        let mut n = match to_i128(digits) {
            Some(n) => n,
            None => return i128::MAX,
        };
        for _ in 0..shift {
            n = match n.checked_mul(10) {
                Some(n) => n,
                None => return i128::MAX,
            };
        }
        n
    } else {
        let drop = shift.unsigned_abs();
        if drop >= digits.len() as u64 {
            // Non-zero and finer than a nano unit: rounds up to 1n.
            return 1;
        }
        let keep = digits.len() - drop as usize;
        let (head, tail) = digits.split_at(keep);
        let n = match to_i128(head) {
            Some(n) => n,
            None => return i128::MAX,
        };
        if tail.iter().any(|d| *d != 0) {
            n.saturating_add(1)
        } else {
            n
        }
    }
}

/// The number a slice of decimal digits spells, if it fits.
fn to_i128(digits: &[u8]) -> Option<i128> {
    digits
        .iter()
        .try_fold(0i128, |n, d| n.checked_mul(10)?.checked_add(i128::from(*d)))
}

/// `n / d` rounded away from zero.
fn div_away_from_zero(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d == 0 {
        q
    } else if n > 0 {
        q + 1
    } else {
        q - 1
    }
}

fn saturate(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n > 0 { i64::MAX } else { i64::MIN })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n * 10^exp` in nano units, for expectations.
    fn dec(n: i128, exp: i32) -> i128 {
        let shift = exp + 9;
        if shift >= 0 {
            n * 10i128.pow(shift as u32)
        } else {
            n / 10i128.pow((-shift) as u32)
        }
    }

    const GI: i128 = 1 << 30;

    #[test]
    fn parses_like_kubernetes() {
        use Format::*;
        // Kubernetes' own table (quantity_test.go, TestQuantityParse).
        let table: &[(&str, i128, Format)] = &[
            ("0", 0, DecimalSI),
            ("0n", 0, DecimalSI),
            ("0u", 0, DecimalSI),
            ("0m", 0, DecimalSI),
            ("0Ki", 0, BinarySI),
            ("0k", 0, DecimalSI),
            ("0Mi", 0, BinarySI),
            ("0M", 0, DecimalSI),
            ("0Gi", 0, BinarySI),
            ("0G", 0, DecimalSI),
            ("0Ti", 0, BinarySI),
            ("0T", 0, DecimalSI),
            ("1", dec(1, 0), DecimalSI),
            ("1Ki", dec(1024, 0), BinarySI),
            ("8Ki", dec(8 * 1024, 0), BinarySI),
            ("7Mi", dec(7 << 20, 0), BinarySI),
            ("6Gi", dec(6 << 30, 0), BinarySI),
            ("5Ti", dec(5 << 40, 0), BinarySI),
            ("4Pi", dec(4 << 50, 0), BinarySI),
            ("3Ei", dec(3 << 60, 0), BinarySI),
            ("10Ti", dec(10 << 40, 0), BinarySI),
            ("100Ti", dec(100 << 40, 0), BinarySI),
            ("5n", dec(5, -9), DecimalSI),
            ("4u", dec(4, -6), DecimalSI),
            ("3m", dec(3, -3), DecimalSI),
            ("9", dec(9, 0), DecimalSI),
            ("8k", dec(8, 3), DecimalSI),
            ("50k", dec(5, 4), DecimalSI),
            ("7M", dec(7, 6), DecimalSI),
            ("6G", dec(6, 9), DecimalSI),
            ("5T", dec(5, 12), DecimalSI),
            ("40T", dec(4, 13), DecimalSI),
            ("300T", dec(3, 14), DecimalSI),
            ("2P", dec(2, 15), DecimalSI),
            ("1E", dec(1, 18), DecimalSI),
            ("1E-3", dec(1, -3), DecimalExponent),
            ("1e3", dec(1, 3), DecimalExponent),
            ("1E6", dec(1, 6), DecimalExponent),
            ("1e9", dec(1, 9), DecimalExponent),
            ("1E12", dec(1, 12), DecimalExponent),
            ("1e15", dec(1, 15), DecimalExponent),
            ("1E18", dec(1, 18), DecimalExponent),
            ("1e14", dec(1, 14), DecimalExponent),
            ("1e13", dec(1, 13), DecimalExponent),
            ("100.035k", dec(100035, 0), DecimalSI),
            ("0.001", dec(1, -3), DecimalSI),
            ("0.0005k", dec(5, -1), DecimalSI),
            ("0.005", dec(5, -3), DecimalSI),
            ("0.05", dec(5, -2), DecimalSI),
            ("0.5", dec(5, -1), DecimalSI),
            ("0.00050k", dec(5, -1), DecimalSI),
            ("0.00500", dec(5, -3), DecimalSI),
            ("0.05000", dec(5, -2), DecimalSI),
            ("0.50000", dec(5, -1), DecimalSI),
            ("0.5e0", dec(5, -1), DecimalExponent),
            ("0.5e-1", dec(5, -2), DecimalExponent),
            ("0.5e-2", dec(5, -3), DecimalExponent),
            ("10.035M", dec(10035, 3), DecimalSI),
            ("1.2e3", dec(12, 2), DecimalExponent),
            ("1.3E+6", dec(13, 5), DecimalExponent),
            ("1.40e9", dec(14, 8), DecimalExponent),
            ("1.53E12", dec(153, 10), DecimalExponent),
            ("1.6e15", dec(16, 14), DecimalExponent),
            ("1.7E18", dec(17, 17), DecimalExponent),
            ("9.01", dec(901, -2), DecimalSI),
            ("8.1k", dec(81, 2), DecimalSI),
            ("7.123456M", dec(7123456, 0), DecimalSI),
            ("6.987654321G", dec(6987654321, 0), DecimalSI),
            ("5.444T", dec(5444, 9), DecimalSI),
            ("40.1T", dec(401, 11), DecimalSI),
            ("300.2T", dec(3002, 11), DecimalSI),
            ("2.5P", dec(25, 14), DecimalSI),
            ("1.01E", dec(101, 16), DecimalSI),
            // Things that saturate or round.
            ("3.001n", dec(4, -9), DecimalSI),
            ("1.1E-9", dec(2, -9), DecimalExponent),
            ("0.0000000001", dec(1, -9), DecimalSI),
            ("0.0000000005", dec(1, -9), DecimalSI),
            ("0.00000000050", dec(1, -9), DecimalSI),
            ("0.5e-9", dec(1, -9), DecimalExponent),
            ("0.9n", dec(1, -9), DecimalSI),
            ("0.00000012345", dec(124, -9), DecimalSI),
            ("0.00000012354", dec(124, -9), DecimalSI),
            ("9Ei", MAX_BINARY_NANOS, BinarySI),
            ("9223372036854775807Ki", MAX_BINARY_NANOS, BinarySI),
            ("8Ei", MAX_BINARY_NANOS, BinarySI),
            ("12E", dec(12, 18), DecimalSI),
            // Fractional binary quantities.
            ("100.035Ki", dec(10243584, -2), BinarySI),
            ("0.5Mi", dec(512 * 1024, 0), BinarySI),
            ("0.05Gi", dec(536870912, -1), BinarySI),
            ("0.025Ti", dec(274877906944, -1), BinarySI),
            // Things written by trolls.
            ("0.000000000001Ki", dec(2, -9), DecimalSI),
            (".001", dec(1, -3), DecimalSI),
            (".0001k", dec(100, -3), DecimalSI),
            ("1.", dec(1, 0), DecimalSI),
            ("1.G", dec(1, 9), DecimalSI),
            (".", 0, DecimalSI),
            ("-.", 0, DecimalSI),
            ("+", 0, DecimalSI),
            (".e5", 0, DecimalExponent),
            ("00001.5", dec(15, -1), DecimalSI),
            ("Gi", 0, BinarySI),
            ("m", 0, DecimalSI),
            ("1.5Gi", 3 * GI / 2 * NANOS_PER_UNIT, BinarySI),
            (".5Ki", dec(512, 0), BinarySI),
            ("0.5Ki", dec(512, 0), BinarySI),
            ("1e-10", dec(1, -9), DecimalExponent),
            (
                "12345678901234567890",
                dec(12345678901234567890, 0),
                DecimalSI,
            ),
        ];
        for (input, nanos, format) in table {
            let q = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(q.nanos(), *nanos, "{input}");
            assert_eq!(q.format(), *format, "{input} format");
            if !input.starts_with(['+', '-']) {
                let neg = parse(&format!("-{input}")).unwrap_or_else(|e| panic!("-{input}: {e}"));
                assert_eq!(neg.nanos(), -nanos, "-{input}");
                let pos = parse(&format!("+{input}")).unwrap_or_else(|e| panic!("+{input}: {e}"));
                assert_eq!(pos.nanos(), *nanos, "+{input}");
            }
        }
    }

    #[test]
    fn rejects_like_kubernetes() {
        use QuantityError::*;
        let table: &[(&str, QuantityError)] = &[
            ("", FormatWrong),
            ("1.1.M", FormatWrong),
            ("1+1.0M", FormatWrong),
            ("0.1mi", Suffix),
            ("0.1am", FormatWrong),
            ("aoeu", FormatWrong),
            (".5i", Suffix),
            ("1i", Suffix),
            ("-3.01i", Suffix),
            ("-3.01e-", Suffix),
            (" 1", FormatWrong),
            ("1 ", FormatWrong),
            ("1e", Suffix),
            ("1ee5", Suffix),
            ("1Ki5", Suffix),
            ("1m5", Suffix),
            ("1e5e5", FormatWrong),
            ("1KB", FormatWrong),
            ("1mb", FormatWrong),
            ("5 Gi", FormatWrong),
            ("1,5", FormatWrong),
            ("1_000", FormatWrong),
            ("∞", FormatWrong),
            ("1e99999999999999999999", Suffix),
            (".e-10", Numeric),
            ("-.e-12", Numeric),
        ];
        for (input, want) in table {
            assert_eq!(parse(input).err(), Some(*want), "{input:?}");
        }
    }

    #[test]
    fn error_messages_are_kubernetes_own() {
        assert_eq!(
            parse("abc").unwrap_err().to_string(),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert_eq!(
            QuantityError::FormatWrong.to_string(),
            format!("quantities must match the regular expression '{QUANTITY_REGEX}'")
        );
        assert_eq!(
            parse("1x").unwrap_err().to_string(),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert_eq!(
            parse("1i").unwrap_err().to_string(),
            "unable to parse quantity's suffix"
        );
        assert_eq!(
            parse(".e-10").unwrap_err().to_string(),
            "unable to parse numeric part of quantity"
        );
    }

    #[test]
    fn millis_round_up_like_milli_value() {
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("1", 1000),
            ("100m", 100),
            ("0.1", 100),
            ("250m", 250),
            ("1.5", 1500),
            ("0.5m", 1),
            ("1n", 1),
            ("1001u", 2),
            ("1000u", 1),
            ("2", 2000),
            ("1e-3", 1),
            ("1.0001", 1001),
            ("1k", 1_000_000),
            ("-0.5m", -1),
            ("-1.5", -1500),
            // Beyond i64: saturates instead of overflowing.
            ("10E", i64::MAX),
            ("9223372036854775807", i64::MAX),
            ("-10E", i64::MIN),
        ];
        for (input, want) in table {
            assert_eq!(parse(input).map(|q| q.millis()), Ok(*want), "{input}");
        }
    }

    #[test]
    fn values_round_up_like_value() {
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("1", 1),
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("100m", 1),
            ("1n", 1),
            ("1.1", 2),
            ("0.5Ki", 512),
            ("0.1Ki", 103),
            ("129M", 129_000_000),
            ("123Mi", 128_974_848),
            ("1e3", 1000),
            ("110", 110),
            ("-1.5", -2),
            ("9Ei", i64::MAX),
            ("10E", i64::MAX),
        ];
        for (input, want) in table {
            assert_eq!(parse(input).map(|q| q.value()), Ok(*want), "{input}");
        }
    }

    #[test]
    fn kubernetes_objects_are_trimmed_like_json_decoding() {
        let q = K8sQuantity(" 500m ".to_string());
        assert_eq!(cpu_millis(&q), Ok(500));
        assert_eq!(memory_bytes(&K8sQuantity("64Mi".into())), Ok(64 << 20));
        assert_eq!(
            cpu_millis(&K8sQuantity("lots".into())),
            Err(QuantityError::FormatWrong)
        );
    }

    #[test]
    fn sums_are_exact_before_rounding() {
        // Kubernetes adds quantities and rounds once, so two 0.4m requests
        // need 1m, not 2m.
        let total: Quantity = ["0.4m", "0.4m"]
            .iter()
            .map(|s| parse(s).expect("valid"))
            .sum();
        assert_eq!(total.millis(), 1);
        assert_eq!(
            (parse("1Gi").expect("valid") + Quantity::from_value(1)).value(),
            (1 << 30) + 1
        );
        assert!(parse("1Gi").expect("valid") > parse("1G").expect("valid"));
        assert_eq!(parse("1000m").expect("valid"), parse("1").expect("valid"));
        assert_eq!(Quantity::from_millis(1500).to_string(), "1.5");
        assert_eq!((-Quantity::from_millis(1)).to_string(), "-0.001");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const DECIMAL: &[(&str, i32)] = &[
            ("n", -9),
            ("u", -6),
            ("m", -3),
            ("", 0),
            ("k", 3),
            ("M", 6),
            ("G", 9),
            ("T", 12),
            ("P", 15),
            ("E", 18),
        ];
        const BINARY: &[(&str, u32)] =
            &[("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50)];

        proptest! {
            // Failures print their input; nothing is written into the tree.
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn integers_with_decimal_suffixes_are_exact(n in 0u32..1_000_000, s in 0usize..DECIMAL.len()) {
                let (suffix, exp) = DECIMAL[s];
                let q = parse(&format!("{n}{suffix}")).expect("valid");
                prop_assert_eq!(q.nanos(), i128::from(n) * 10i128.pow((exp + 9) as u32));
            }

            #[test]
            fn integers_with_binary_suffixes_are_exact(n in 0u32..1_000_000, s in 0usize..BINARY.len()) {
                let (suffix, exp) = BINARY[s];
                let q = parse(&format!("{n}{suffix}")).expect("valid");
                let want = (i128::from(n) << exp).min(i128::from(i64::MAX));
                prop_assert_eq!(i128::from(q.value()), want);
            }

            #[test]
            fn exponents_agree_with_suffixes(n in 0u32..1_000_000, s in 0usize..DECIMAL.len()) {
                let (suffix, exp) = DECIMAL[s];
                let a = parse(&format!("{n}{suffix}")).expect("valid");
                let b = parse(&format!("{n}e{exp}")).expect("valid");
                prop_assert_eq!(a, b);
            }

            #[test]
            fn fractions_round_up_to_the_millicore(int in 0u64..10_000, frac in "[0-9]{1,12}") {
                let q = parse(&format!("{int}.{frac}")).expect("valid");
                // Exact value in units of 10^-len(frac).
                let scale = 10u128.pow(frac.len() as u32);
                let exact = u128::from(int) * scale + frac.parse::<u128>().expect("digits");
                let millis = q.millis() as u128;
                // ceil(exact * 1000 / scale)
                prop_assert!(millis * scale >= exact * 1000);
                prop_assert!(millis == 0 || (millis - 1) * scale < exact * 1000);
            }

            #[test]
            fn negation_mirrors(s in "[0-9]{0,25}(\\.[0-9]{0,25})?([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]{1,3})?") {
                if let Ok(q) = parse(&s) {
                    let neg = parse(&format!("-{s}")).expect("negation of a valid quantity parses");
                    prop_assert_eq!(neg, -q);
                }
            }

            #[test]
            fn never_panics(s in "[-+]?[0-9.]{0,40}[eEinumkKMGTPa ]{0,3}[-+]?[0-9]{0,12}") {
                let _ = parse(&s);
            }
        }
    }
}
