//! Fixed-point quantities of the contract: carats (hundredths), US dollars
//! (cents) and shares (ten-thousandths), parsed strictly from strings so that
//! no float ever touches a mass or a share.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::rejection::{tagged, Code};

/// Parses `digits[.d{1,scale}]` into an integer scaled by 10^scale.
/// No sign, exponent, spaces or leading dot; at most 15 integer digits.
fn parse_fixed(s: &str, scale: u32) -> Result<u64, String> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || int.len() > 15 {
        return Err(format!("{s:?} is not a plain decimal number"));
    }
    let mut value: u64 = int.parse().map_err(|_| format!("{s:?} is out of range"))?;
    value *= 10u64.pow(scale);
    if let Some(f) = frac {
        if !digits(f) {
            return Err(format!("{s:?} is not a plain decimal number"));
        }
        if f.len() > scale as usize {
            return Err(format!("{s:?} has more than {scale} decimals"));
        }
        let pad = 10u64.pow(scale - f.len() as u32);
        value += f.parse::<u64>().map_err(|_| format!("{s:?} is out of range"))? * pad;
    }
    Ok(value)
}

fn fmt_fixed(v: u64, scale: u32, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let unit = 10u64.pow(scale);
    write!(f, "{}.{:0width$}", v / unit, v % unit, width = scale as usize)
}

/// The largest mass one lot may have: 100,000,000.00 ct, about 20 tonnes
/// of rough. World production is about 120 million carats a year and the
/// largest mines yield 10 to 25 million, so no real lot, parcel or KP
/// shipment comes near it; anything above is an error or an attack (and
/// sums of many such lots stay far from overflowing).
pub const MAX_CARATS: u64 = 10_000_000_000;

/// A positive mass in hundredths of a carat. Zero is not a mass; more than
/// [`MAX_CARATS`] is refused when parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Carats(u64);

impl Carats {
    pub fn from_hundredths(h: u64) -> Option<Carats> {
        (h > 0).then_some(Carats(h))
    }
    pub fn hundredths(self) -> u64 {
        self.0
    }
    /// Sum of several masses; `None` on overflow (impossible below 10^15 ct each).
    pub fn sum<'a>(it: impl IntoIterator<Item = &'a Carats>) -> Option<u64> {
        it.into_iter().try_fold(0u64, |acc, c| acc.checked_add(c.0))
    }
}

/// Hundredths of a carat as carats text (`"1234.56"`), zero included: for
/// sums and differences, which need not be a lot's mass.
pub fn show_hundredths(h: u64) -> String {
    format!("{}.{:02}", h / 100, h % 100)
}

impl std::str::FromStr for Carats {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v = parse_fixed(s, 2)?;
        if v > MAX_CARATS {
            return Err(format!("{s:?} is more than 100000000.00 ct, more than any real lot or parcel"));
        }
        Carats::from_hundredths(v).ok_or_else(|| format!("{s:?} is zero; a lot has mass"))
    }
}

impl fmt::Display for Carats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_fixed(self.0, 2, f)
    }
}

/// An amount in US cents; zero allowed (a gift is still a shipment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usd(u64);

impl Usd {
    pub fn cents(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for Usd {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_fixed(s, 2).map(Usd)
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_fixed(self.0, 2, f)
    }
}

/// A share of a whole in ten-thousandths (`"0.4130"` is 4130); at most 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share(u32);

impl Share {
    pub const WHOLE: u32 = 10_000;
    pub fn from_ten_thousandths(v: u32) -> Option<Share> {
        (v <= Self::WHOLE).then_some(Share(v))
    }
    pub fn ten_thousandths(self) -> u32 {
        self.0
    }
}

impl std::str::FromStr for Share {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v = parse_fixed(s, 4)?;
        u32::try_from(v).ok().and_then(Share::from_ten_thousandths).ok_or_else(|| format!("{s:?} is more than 1"))
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_fixed(u64::from(self.0), 4, f)
    }
}

/// Serde through the string form for each fixed-point type: the wire is
/// always a JSON string, never a number.
macro_rules! string_serde {
    ($t:ty, $what:literal, $code:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} as a decimal string", $what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(|e: String| E::custom(tagged($code, format!("{}: {e}", $what))))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
string_serde!(Carats, "carats", Code::InvalidCarats);
string_serde!(Usd, "value_usd", Code::InvalidField);
string_serde!(Share, "share", Code::InvalidField);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carats_table() {
        let ok = [("1234.56", 123456), ("1", 100), ("0.5", 50), ("0.01", 1), ("007.10", 710), ("100000000.00", MAX_CARATS)];
        for (s, h) in ok {
            assert_eq!(s.parse::<Carats>().map(Carats::hundredths), Ok(h), "{s}");
        }
        let bad = [
            "1.001",
            "-1",
            "1e3",
            "0",
            "0.00",
            "",
            " 1.00",
            "1.00 ",
            "+1",
            ".5",
            "5.",
            "NaN",
            "1,5",
            "9999999999999999",
            "1e9",
            "0x10",
            "١",
            "100000000.01",
            "999999999999999.99",
        ];
        for s in bad {
            assert!(s.parse::<Carats>().is_err(), "{s:?} must be refused");
        }
    }

    #[test]
    fn carats_round_trip_two_decimals() {
        for s in ["0.72", "1.10", "2500.00", "0.05"] {
            assert_eq!(s.parse::<Carats>().unwrap().to_string(), s);
        }
        assert_eq!("1.1".parse::<Carats>().unwrap().to_string(), "1.10");
    }

    #[test]
    fn shares() {
        assert_eq!("0.4130".parse::<Share>().unwrap().ten_thousandths(), 4130);
        assert_eq!("1".parse::<Share>().unwrap().to_string(), "1.0000");
        assert!("1.0001".parse::<Share>().is_err());
        assert!("0.41305".parse::<Share>().is_err());
    }

    #[test]
    fn json_is_string_only() {
        assert!(serde_json::from_str::<Carats>("1.5").is_err());
        assert_eq!(serde_json::from_str::<Carats>("\"1.5\"").unwrap().hundredths(), 150);
        assert_eq!(serde_json::to_string(&Carats(150)).unwrap(), "\"1.50\"");
    }
}
