//! The feature schema: the ordered model inputs, where each comes from, and
//! what it takes when missing; plus the catalogue of real-time features.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::features::{FeatureNames, FeatureRow};

/// Where a feature's value comes from at request time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSource {
    /// The feature store (filled by `tandem materialize`). A value sent in
    /// the request's context overrides the stored one.
    Stored,
    /// The caller's request context.
    Request,
    /// Computed at request time from the catalogue ([`RealtimeFeature`]).
    Realtime(RealtimeFeature),
}

/// Features computed at request time from the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RealtimeFeature {
    /// Hour of the day, 0..=23.
    HourOfDay,
    /// Day of the week, 0 = Monday ..= 6 = Sunday (ISO order).
    DayOfWeek,
    /// 1 on Saturday and Sunday, else 0.
    IsWeekend,
    /// Seconds since the Unix epoch.
    UnixTime,
    /// Minute of the hour, 0..=59.
    MinuteOfHour,
    /// Day of the month, 1..=31.
    DayOfMonth,
    /// Month, 1..=12.
    Month,
}

impl RealtimeFeature {
    /// Every feature of the catalogue.
    pub const ALL: [RealtimeFeature; 7] = [
        RealtimeFeature::HourOfDay,
        RealtimeFeature::DayOfWeek,
        RealtimeFeature::IsWeekend,
        RealtimeFeature::UnixTime,
        RealtimeFeature::MinuteOfHour,
        RealtimeFeature::DayOfMonth,
        RealtimeFeature::Month,
    ];

    /// The catalogue name (`hour_of_day`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RealtimeFeature::HourOfDay => "hour_of_day",
            RealtimeFeature::DayOfWeek => "day_of_week",
            RealtimeFeature::IsWeekend => "is_weekend",
            RealtimeFeature::UnixTime => "unix_time",
            RealtimeFeature::MinuteOfHour => "minute_of_hour",
            RealtimeFeature::DayOfMonth => "day_of_month",
            RealtimeFeature::Month => "month",
        }
    }

    /// The catalogue entry of that name.
    pub fn from_name(name: &str) -> Option<RealtimeFeature> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The value at `now`, in local time `utc_offset_secs` east of UTC.
    pub fn compute(self, now: SystemTime, utc_offset_secs: i64) -> f64 {
        let secs = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let local = secs.floor() as i64 + utc_offset_secs;
        let days = local.div_euclid(86_400);
        let of_day = local.rem_euclid(86_400);
        // 1970-01-01 was a Thursday (ISO weekday 3 counting Monday as 0).
        let weekday = (days + 3).rem_euclid(7);
        match self {
            RealtimeFeature::HourOfDay => (of_day / 3600) as f64,
            RealtimeFeature::MinuteOfHour => ((of_day % 3600) / 60) as f64,
            RealtimeFeature::DayOfWeek => weekday as f64,
            RealtimeFeature::IsWeekend => f64::from(u8::from(weekday >= 5)),
            RealtimeFeature::UnixTime => secs,
            RealtimeFeature::DayOfMonth => civil_from_days(days).2 as f64,
            RealtimeFeature::Month => civil_from_days(days).1 as f64,
        }
    }
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One model input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureSpec {
    /// Name, as stored in the feature store and sent in request context.
    pub name: String,
    /// Where the value comes from.
    pub source: FeatureSource,
    /// The value used when it is missing.
    pub default: f64,
}

/// How a feature is declared in configuration: its source and default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureOverride {
    /// `stored`, `request`, or `realtime`.
    pub source: Option<String>,
    /// The default value.
    pub default: Option<f64>,
}

/// Why a schema could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A configured feature is not a model input.
    #[error("feature '{0}' is configured but is not an input of the model")]
    UnknownFeature(String),
    /// A source name is not one of stored/request/realtime.
    #[error("feature '{name}': source '{source_name}' is not one of stored, request, realtime")]
    BadSource {
        /// Feature name.
        name: String,
        /// The source given.
        source_name: String,
    },
    /// A realtime feature whose name is not in the catalogue.
    #[error(
        "feature '{0}' is declared realtime but the catalogue has no such feature (it has: hour_of_day, day_of_week, is_weekend, unix_time, minute_of_hour, day_of_month, month)"
    )]
    NotInCatalogue(String),
    /// A default that is not a finite number.
    #[error("feature '{0}': the default must be a finite number")]
    BadDefault(String),
}

/// The ordered model inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureSchema {
    features: Vec<FeatureSpec>,
    utc_offset_secs: i64,
}

impl FeatureSchema {
    /// Builds the schema of a model from its input names. Each feature is
    /// `stored` with default 0, except names of the real-time catalogue,
    /// which are `realtime`; `overrides` (by name) change the source and
    /// default.
    pub fn new(
        names: &[String],
        overrides: &BTreeMap<String, FeatureOverride>,
        utc_offset_secs: i64,
    ) -> Result<FeatureSchema, SchemaError> {
        if let Some(unknown) = overrides.keys().find(|k| !names.contains(k)) {
            return Err(SchemaError::UnknownFeature(unknown.clone()));
        }
        let features = names
            .iter()
            .map(|name| {
                let o = overrides.get(name);
                let source = match o.and_then(|o| o.source.as_deref()) {
                    None => match RealtimeFeature::from_name(name) {
                        Some(r) => FeatureSource::Realtime(r),
                        None => FeatureSource::Stored,
                    },
                    Some("stored") => FeatureSource::Stored,
                    Some("request") => FeatureSource::Request,
                    Some("realtime") => FeatureSource::Realtime(
                        RealtimeFeature::from_name(name)
                            .ok_or_else(|| SchemaError::NotInCatalogue(name.clone()))?,
                    ),
                    Some(other) => {
                        return Err(SchemaError::BadSource {
                            name: name.clone(),
                            source_name: other.to_string(),
                        });
                    }
                };
                let default = o.and_then(|o| o.default).unwrap_or(0.0);
                if !default.is_finite() {
                    return Err(SchemaError::BadDefault(name.clone()));
                }
                Ok(FeatureSpec {
                    name: name.clone(),
                    source,
                    default,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeatureSchema {
            features,
            utc_offset_secs,
        })
    }

    /// The features, in model input order.
    pub fn features(&self) -> &[FeatureSpec] {
        &self.features
    }

    /// Number of features.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// Whether any feature is read from the feature store.
    pub fn needs_store(&self) -> bool {
        self.features
            .iter()
            .any(|f| f.source == FeatureSource::Stored)
    }

    /// Offset of local time from UTC used by the real-time features.
    pub fn utc_offset_secs(&self) -> i64 {
        self.utc_offset_secs
    }

    /// Assembles one input row in schema order into `out`: stored features
    /// from the request context if given there, else from `stored`;
    /// request features from the context; real-time features computed at
    /// `now`. Missing or non-finite values take the default; the names of
    /// those are pushed to `missing`. `slots` remembers where this schema's
    /// features sit in the last list of names seen: pass the same one for
    /// every row of a request.
    pub fn assemble(
        &self,
        stored: Option<&FeatureRow>,
        context: Option<&BTreeMap<String, f64>>,
        now: SystemTime,
        slots: &mut StoredSlots,
        out: &mut Vec<f32>,
        missing: &mut Vec<String>,
    ) {
        if let Some(row) = stored {
            slots.resolve(self, row.names());
        }
        for (k, f) in self.features.iter().enumerate() {
            let value = match f.source {
                FeatureSource::Stored => {
                    context.and_then(|c| c.get(&f.name).copied()).or_else(|| {
                        let row = stored?;
                        row.value_at(slots.slots[k]?)
                    })
                }
                FeatureSource::Request => context.and_then(|c| c.get(&f.name)).copied(),
                FeatureSource::Realtime(r) => Some(r.compute(now, self.utc_offset_secs)),
            };
            match value {
                Some(v) if v.is_finite() => out.push(v as f32),
                _ => {
                    missing.push(f.name.clone());
                    out.push(f.default as f32);
                }
            }
        }
    }
}

/// Where the features of a schema sit in a list of stored feature names,
/// found once per list: the rows of a feature table share one list, so a
/// request's rows are assembled by index, not by name.
#[derive(Debug, Clone, Default)]
pub struct StoredSlots {
    names: Option<FeatureNames>,
    /// Per feature of the schema: its index in `names`.
    slots: Vec<Option<usize>>,
}

impl StoredSlots {
    fn resolve(&mut self, schema: &FeatureSchema, names: &FeatureNames) {
        if self.names.as_ref().is_some_and(|n| Arc::ptr_eq(n, names)) {
            return;
        }
        self.slots.clear();
        self.slots.extend(
            schema
                .features
                .iter()
                .map(|f| names.binary_search_by(|n| (**n).cmp(&f.name)).ok()),
        );
        self.names = Some(names.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn clock_features_at_known_instants() {
        // 2026-11-28T13:45:10Z is a Saturday.
        let t = at(1_795_873_510);
        assert_eq!(RealtimeFeature::HourOfDay.compute(t, 0), 13.0);
        assert_eq!(RealtimeFeature::MinuteOfHour.compute(t, 0), 45.0);
        assert_eq!(RealtimeFeature::DayOfWeek.compute(t, 0), 5.0);
        assert_eq!(RealtimeFeature::IsWeekend.compute(t, 0), 1.0);
        assert_eq!(RealtimeFeature::DayOfMonth.compute(t, 0), 28.0);
        assert_eq!(RealtimeFeature::Month.compute(t, 0), 11.0);
        // Twelve hours east it is Sunday 01:45.
        assert_eq!(RealtimeFeature::HourOfDay.compute(t, 12 * 3600), 1.0);
        assert_eq!(RealtimeFeature::DayOfWeek.compute(t, 12 * 3600), 6.0);
        // 1970-01-01 was a Thursday; 1970-01-05 a Monday.
        assert_eq!(RealtimeFeature::DayOfWeek.compute(at(0), 0), 3.0);
        assert_eq!(RealtimeFeature::DayOfWeek.compute(at(4 * 86_400), 0), 0.0);
        assert_eq!(RealtimeFeature::IsWeekend.compute(at(4 * 86_400), 0), 0.0);
        // Leap day.
        let leap = at(1_709_208_000); // 2024-02-29T12:00:00Z
        assert_eq!(RealtimeFeature::Month.compute(leap, 0), 2.0);
        assert_eq!(RealtimeFeature::DayOfMonth.compute(leap, 0), 29.0);
    }

    #[test]
    fn assembly_follows_schema_order_and_counts_defaults() {
        let names: Vec<String> = ["a", "b", "hour_of_day", "c"].map(String::from).to_vec();
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "b".to_string(),
            FeatureOverride {
                source: Some("request".into()),
                default: Some(7.0),
            },
        );
        let schema = FeatureSchema::new(&names, &overrides, 0).unwrap();
        let stored: FeatureRow = [("a", 1.5), ("c", f64::NAN)].into_iter().collect();
        let mut out = vec![];
        let mut missing = vec![];
        let mut slots = StoredSlots::default();
        schema.assemble(
            Some(&stored),
            None,
            at(3600 * 5),
            &mut slots,
            &mut out,
            &mut missing,
        );
        assert_eq!(out, [1.5, 7.0, 5.0, 0.0]);
        assert_eq!(missing, ["b", "c"]);

        let context = BTreeMap::from([("a".to_string(), 9.0), ("b".to_string(), 2.0)]);
        out.clear();
        missing.clear();
        schema.assemble(
            Some(&stored),
            Some(&context),
            at(0),
            &mut slots,
            &mut out,
            &mut missing,
        );
        assert_eq!(out, [9.0, 2.0, 0.0, 0.0]);
        assert_eq!(missing, ["c"]);

        // A row with another list of names is looked up in its own list,
        // and the one after it, with the first list again, in that one.
        let other: FeatureRow = [("0", 0.0), ("c", 3.0), ("zz", 1.0)].into_iter().collect();
        for (row, want, gone) in [
            (&other, [0.0, 7.0, 0.0, 3.0], vec!["a", "b"]),
            (&stored, [1.5, 7.0, 0.0, 0.0], vec!["b", "c"]),
        ] {
            out.clear();
            missing.clear();
            schema.assemble(Some(row), None, at(0), &mut slots, &mut out, &mut missing);
            assert_eq!(out, want);
            assert_eq!(missing, gone);
        }
    }

    #[test]
    fn bad_configuration_is_named() {
        let names = vec!["a".to_string()];
        let o = |s: &str| {
            BTreeMap::from([(
                s.to_string(),
                FeatureOverride {
                    source: Some("realtime".into()),
                    default: None,
                },
            )])
        };
        assert_eq!(
            FeatureSchema::new(&names, &o("zz"), 0),
            Err(SchemaError::UnknownFeature("zz".into()))
        );
        assert_eq!(
            FeatureSchema::new(&names, &o("a"), 0),
            Err(SchemaError::NotInCatalogue("a".into()))
        );
    }
}
