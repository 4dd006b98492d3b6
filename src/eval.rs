//! `eval`: a model's SI-SDR, SI-SDRi and SDRi on a LibriMix-style directory, in any runtime
//! (tract by default).
use crate::audio::{dataset, metrics};
use crate::error::{Error, Result};
use crate::onnx::ModelProto;
use crate::runtime::{Runner, Runtime};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    pub si_sdr: f64,
    pub si_sdri: f64,
    pub sdri: f64,
    pub per_example: Vec<(String, metrics::Scores)>,
    /// Means by mixing condition, when the set has a `conditions.json` (`mix --split-by`):
    /// dimension (`snr_db`, `noise_category`, `sex`) -> value -> scores.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_condition: BTreeMap<String, BTreeMap<String, ConditionScore>>,
}

/// Mean scores of the mixtures of one condition.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConditionScore {
    pub examples: usize,
    pub si_sdri: f64,
    pub sdri: f64,
}

/// Means of `per` grouped by each dimension of `conditions` (mixtures without an entry are
/// left out).
fn by_condition(
    per: &[(String, metrics::Scores)],
    conditions: &BTreeMap<String, dataset::Condition>,
) -> BTreeMap<String, BTreeMap<String, ConditionScore>> {
    let mut out: BTreeMap<String, BTreeMap<String, ConditionScore>> = BTreeMap::new();
    for (name, sc) in per {
        let Some(c) = conditions.get(name) else {
            continue;
        };
        let mut dims = vec![
            ("snr_db", format!("{}", c.snr_db)),
            ("noise_category", c.noise_category.clone()),
        ];
        if let Some(sex) = &c.sex {
            dims.push(("sex", sex.clone()));
        }
        for (d, v) in dims {
            let e = out.entry(d.into()).or_default().entry(v).or_default();
            e.examples += 1;
            e.si_sdri += sc.si_sdri;
            e.sdri += sc.sdri;
        }
    }
    for v in out.values_mut().flat_map(|m| m.values_mut()) {
        v.si_sdri /= v.examples as f64;
        v.sdri /= v.examples as f64;
    }
    out
}

/// Runs `model` (input `[1, 1, T]`, output `[1, n_src, T]` or `[1, T]`) in `runtime` on
/// every mixture and scores it against the references.
///
/// Errors: unreadable audio, a set without references, a model the runtime cannot run.
pub fn eval(model: &ModelProto, data: &Path, rate: u32, runtime: Runtime) -> Result<EvalReport> {
    let examples = dataset::load(data, rate)?;
    let mut plans: HashMap<usize, Runner> = HashMap::new();
    let mut per = vec![];
    for ex in &examples {
        if ex.sources.is_empty() {
            return Err(Error::Audio {
                path: data.into(),
                msg: "eval needs references (s1/, s2/ ...)".into(),
            });
        }
        let t = ex.mix.len();
        let plan = match plans.entry(t) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Runner::new(runtime, model, &[1, 1, t], 1)?)
            }
        };
        let y = plan.run(&ex.mix)?;
        let n_src = (y.len() / t).max(1);
        let est: Vec<Vec<f32>> = (0..n_src)
            .map(|k| y[k * t..((k + 1) * t).min(y.len())].to_vec())
            .collect();
        per.push((ex.name.clone(), metrics::score(&est, &ex.sources, &ex.mix)));
    }
    let n = per.len() as f64;
    Ok(EvalReport {
        examples: per.len(),
        si_sdr: per.iter().map(|p| p.1.si_sdr).sum::<f64>() / n,
        si_sdri: per.iter().map(|p| p.1.si_sdri).sum::<f64>() / n,
        sdri: per.iter().map(|p| p.1.sdri).sum::<f64>() / n,
        by_condition: dataset::conditions(data)?
            .map(|c| by_condition(&per, &c))
            .unwrap_or_default(),
        per_example: per,
    })
}

/// Markdown tables of [`EvalReport::by_condition`] for several models scored on one set
/// (`(name, report)`, the first one the reference): SI-SDRi per condition value, and each
/// later model's share of the first's, or its difference in dB where the first improves
/// by less than 1 dB (a share of a loss reads backwards: -3.6 of -1.7 dB is not 210%).
pub fn condition_tables(reports: &[(&str, &EvalReport)]) -> String {
    let Some((_, first)) = reports.first() else {
        return String::new();
    };
    let mut s = String::new();
    for (dim, values) in &first.by_condition {
        s += &format!("\nSI-SDRi (dB) by {dim}:\n\n| {dim} | mixtures |");
        for (name, _) in reports {
            s += &format!(" {name} |");
        }
        s += "\n|---|---|";
        s += &"---|".repeat(reports.len());
        s += "\n";
        for (v, c) in values {
            s += &format!("| {v} | {} |", c.examples);
            for (k, (_, r)) in reports.iter().enumerate() {
                let x = r
                    .by_condition
                    .get(dim)
                    .and_then(|m| m.get(v))
                    .map(|c| c.si_sdri);
                match x {
                    // a share of an improvement under 1 dB (or of a loss) says nothing:
                    // the difference in dB instead
                    Some(x) if k > 0 && c.si_sdri >= 1.0 => {
                        s += &format!(" {x:.2} ({:.0}%) |", 100.0 * x / c.si_sdri)
                    }
                    Some(x) if k > 0 => s += &format!(" {x:.2} ({:+.2} dB) |", x - c.si_sdri),
                    Some(x) => s += &format!(" {x:.2} |"),
                    None => s += " |",
                }
            }
            s += "\n";
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scores: &[(&str, f64)]) -> EvalReport {
        let noise = scores
            .iter()
            .map(|&(v, si_sdri)| {
                let c = ConditionScore {
                    examples: 8,
                    si_sdri,
                    sdri: si_sdri,
                };
                (v.to_string(), c)
            })
            .collect();
        EvalReport {
            examples: 8 * scores.len(),
            si_sdr: 0.0,
            si_sdri: 0.0,
            sdri: 0.0,
            per_example: vec![],
            by_condition: [("noise".to_string(), noise)].into_iter().collect(),
        }
    }

    #[test]
    fn a_share_only_of_a_real_improvement_else_the_difference() {
        let a = report(&[("farm", 11.07), ("substation", -1.72), ("quiet", 0.4)]);
        let b = report(&[("farm", 8.88), ("substation", -3.61), ("quiet", 0.9)]);
        let t = condition_tables(&[("original", &a), ("compressed", &b)]);
        assert!(t.contains("| farm | 8 | 11.07 | 8.88 (80%) |"), "{t}");
        assert!(
            t.contains("| substation | 8 | -1.72 | -3.61 (-1.89 dB) |"),
            "{t}"
        );
        assert!(t.contains("| quiet | 8 | 0.40 | 0.90 (+0.50 dB) |"), "{t}");
    }
}
