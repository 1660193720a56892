//! The feature-scoring module: weighted predicates over the request head,
//! summed into a score.
//!
//! The module has a fixed capacity (`limits.max_features`), like the bot
//! module whose feature file doubled on 18 Nov 2025. Exceeding it is a config
//! error at compile time. At run time, scoring returns a `Result` rather than
//! assuming its invariants: the caller decides whether an error fails open or
//! closed, and the request is never lost to a panic.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;
use regex::Regex;

/// Header or query values longer than this are not scanned: scoring fails
/// for that request (and the fail mode decides) instead of spending
/// unbounded time on one value.
pub const MAX_SCANNED_VALUE: usize = 16 * 1024;

#[derive(Debug)]
pub struct Feature {
    pub name: String,
    pub weight: f64,
    pub predicate: Predicate,
}

#[derive(Debug)]
pub enum Predicate {
    Header { name: HeaderName, test: ValueTest },
    Query { name: String, test: ValueTest },
    PathRegex(Regex),
    Method(Vec<Method>),
    ClientIp(Vec<IpNet>),
}

#[derive(Debug)]
pub enum ValueTest {
    Present(bool),
    Equals(String),
    Contains(String),
    Regex(Regex),
}

impl ValueTest {
    fn test(&self, value: Option<&str>) -> Result<bool, ScoreError> {
        if let Some(v) = value
            && v.len() > MAX_SCANNED_VALUE
        {
            return Err(ScoreError::ValueTooLong { len: v.len() });
        }
        Ok(match (self, value) {
            (ValueTest::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (ValueTest::Equals(s), Some(v)) => v == s,
            (ValueTest::Contains(s), Some(v)) => v.contains(s.as_str()),
            (ValueTest::Regex(re), Some(v)) => re.is_match(v),
        })
    }
}

/// Why a request could not be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("a scanned value of {len} bytes is over the scoring limit")]
    ValueTooLong { len: usize },
    #[error("the feature set holds {count} features, over its capacity of {capacity}")]
    OverCapacity { count: usize, capacity: usize },
    #[error("the score is not a finite number")]
    NotFinite,
}

/// The compiled feature set.
#[derive(Debug, Default)]
pub struct FeatureSet {
    features: Vec<Feature>,
    capacity: usize,
}

/// What a request looks like to the features.
pub struct FeatureInput<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

/// A request's score and which features fired.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Score {
    pub value: f64,
    pub matched: Vec<usize>,
}

impl FeatureSet {
    /// Fails when `features` exceeds `capacity`; the compiler reports that as
    /// a config error before this is ever called.
    pub fn new(features: Vec<Feature>, capacity: usize) -> Result<Self, ScoreError> {
        if features.len() > capacity {
            return Err(ScoreError::OverCapacity {
                count: features.len(),
                capacity,
            });
        }
        Ok(Self { features, capacity })
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&Feature> {
        self.features.get(i)
    }

    pub fn score(&self, input: &FeatureInput<'_>) -> Result<Score, ScoreError> {
        if self.features.len() > self.capacity {
            return Err(ScoreError::OverCapacity {
                count: self.features.len(),
                capacity: self.capacity,
            });
        }
        let mut score = Score::default();
        for (i, f) in self.features.iter().enumerate() {
            let hit = match &f.predicate {
                Predicate::Header { name, test } => {
                    let mut hit = false;
                    let mut values = input.headers.get_all(name).iter().peekable();
                    if values.peek().is_none() {
                        hit = test.test(None)?;
                    }
                    for v in values {
                        if test.test(Some(v.to_str().unwrap_or("")))? {
                            hit = true;
                            break;
                        }
                    }
                    hit
                }
                Predicate::Query { name, test } => test.test(query_param(input.query, name))?,
                Predicate::PathRegex(re) => {
                    if input.path.len() > MAX_SCANNED_VALUE {
                        return Err(ScoreError::ValueTooLong {
                            len: input.path.len(),
                        });
                    }
                    re.is_match(input.path)
                }
                Predicate::Method(ms) => ms.contains(input.method),
                Predicate::ClientIp(nets) => nets.iter().any(|n| n.contains(&input.client_ip)),
            };
            if hit {
                score.value += f.weight;
                score.matched.push(i);
            }
        }
        if !score.value.is_finite() {
            return Err(ScoreError::NotFinite);
        }
        Ok(score)
    }
}

/// The raw value of the first `name=` parameter of a query string.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> FeatureInput<'a> {
        FeatureInput {
            method: &Method::GET,
            path: "/x",
            query,
            headers,
            client_ip: "10.1.2.3".parse().unwrap(),
        }
    }

    #[test]
    fn scores_sum_and_capacity_is_checked() {
        let features = vec![
            Feature {
                name: "ua".into(),
                weight: 0.5,
                predicate: Predicate::Header {
                    name: HeaderName::from_static("user-agent"),
                    test: ValueTest::Contains("curl".into()),
                },
            },
            Feature {
                name: "net".into(),
                weight: 0.25,
                predicate: Predicate::ClientIp(vec!["10.0.0.0/8".parse().unwrap()]),
            },
            Feature {
                name: "q".into(),
                weight: 1.0,
                predicate: Predicate::Query {
                    name: "debug".into(),
                    test: ValueTest::Present(true),
                },
            },
        ];
        let set = FeatureSet::new(features, 3).unwrap();
        let mut h = HeaderMap::new();
        h.insert("user-agent", "curl/8.0".parse().unwrap());
        let s = set.score(&input(&h, Some("a=1&debug"))).unwrap();
        assert_eq!(s.matched, vec![0, 1, 2]);
        assert!((s.value - 1.75).abs() < 1e-9);
        assert!(FeatureSet::new(vec![], 0).is_ok());
        let over = vec![Feature {
            name: "x".into(),
            weight: 1.0,
            predicate: Predicate::Method(vec![]),
        }];
        assert!(matches!(
            FeatureSet::new(over, 0),
            Err(ScoreError::OverCapacity {
                count: 1,
                capacity: 0
            })
        ));
    }

    #[test]
    fn oversized_values_fail_instead_of_scanning() {
        let set = FeatureSet::new(
            vec![Feature {
                name: "ua".into(),
                weight: 1.0,
                predicate: Predicate::Header {
                    name: HeaderName::from_static("user-agent"),
                    test: ValueTest::Contains("bot".into()),
                },
            }],
            10,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "user-agent",
            "a".repeat(MAX_SCANNED_VALUE + 1).parse().unwrap(),
        );
        assert!(matches!(
            set.score(&input(&h, None)),
            Err(ScoreError::ValueTooLong { .. })
        ));
    }
}
