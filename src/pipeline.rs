//! `compress`: inspect, prune (magnitude masks under a MACs budget for now), verify, eval,
//! bench, and a report directory (`OUT.report/report.md`, `report.json`) beside OUT.
use crate::analysis::{analyze_groups, profile, Region};
use crate::bench::{self, Runtime};
use crate::error::{Error, Result};
use crate::ir::Ir;
use crate::onnx;
use crate::prune::{masks_for_ratio, slim, Budget, Criterion};
use crate::{eval, verify};
use std::path::{Path, PathBuf};

pub struct Options {
    /// Share of separator MACs to keep.
    pub target_macs: f64,
    pub criterion: Criterion,
    pub seed: u64,
    pub runtimes: Vec<Runtime>,
    pub bench_runs: usize,
}

/// Runs the pipeline; writes OUT and its report directory. Returns the report directory.
pub fn compress(model_path: &Path, data: &Path, out: &Path, o: &Options) -> Result<PathBuf> {
    if !(0.0..=1.0).contains(&o.target_macs) || o.target_macs == 0.0 {
        return Err(Error::Other(format!(
            "--target-macs {} must be in (0, 1]",
            o.target_macs
        )));
    }
    let ir = Ir::new(onnx::load(model_path)?, 16000)?;
    let groups = analyze_groups(&ir)?;
    let b = masks_for_ratio(
        &ir,
        &groups,
        &Budget {
            criterion: o.criterion,
            seed: o.seed,
            ..Budget::new(1.0 - o.target_macs)
        },
    )?;
    let slim_ir = slim(&ir, &groups, &b.masks)?;
    let slim_model = &slim_ir.model;
    let x = verify::test_signal(ir.samples, 16000.0);
    let check = verify::check(
        &ir,
        &groups,
        Some((&b.masks, Some(slim_model))),
        2,
        o.seed,
        &x,
        Runtime::preferred(),
    )?;
    if !check.passed {
        return Err(Error::Other("verification failed: nothing written".into()));
    }
    let before = eval::eval(&ir.model, data, 16000)?;
    let after = eval::eval(slim_model, data, 16000)?;
    let rows = bench::bench(
        &[
            ("original".into(), ir.model.clone()),
            ("slim".into(), slim_model.clone()),
        ],
        &[1.0, 4.0],
        &o.runtimes,
        16000,
        1,
        3,
        o.bench_runs,
    )?;
    let (pa, pb) = (profile(&ir), profile(&slim_ir));
    onnx::save(slim_model, out, Some(model_path), false)?;
    let dir = PathBuf::from(format!("{}.report", out.display()));
    b.masks.write(&dir.join("masks.json"))?;
    let sep = |p: &crate::analysis::Profile| p.regions[&Region::Separator].macs;
    let json = serde_json::json!({
        "model": model_path, "output": out, "criterion": format!("{:?}", o.criterion),
        "params": [pa.params, pb.params], "macs": [pa.macs, pb.macs], "separator_macs": [sep(&pa), sep(&pb)],
        "check": check, "eval": { "original": before, "slim": after }, "bench": rows,
    });
    let md = format!(
        "# sepprune compress report\n\nmodel: `{}` -> `{}` ({:?} masks, separator MACs kept {:.1}%)\n\n| | params | GMac (1 s) | SI-SDR dB | SI-SDRi dB | SDRi dB |\n|---|---|---|---|---|---|\n| original | {} | {:.3} | {:.2} | {:.2} | {:.2} |\n| slim | {} | {:.3} | {:.2} | {:.2} | {:.2} |\n\nverification (tract): {}\n\n{}",
        model_path.display(), out.display(), o.criterion, 100.0 * sep(&pb) as f64 / sep(&pa) as f64,
        pa.params, pa.macs as f64 / 1e9, before.si_sdr, before.si_sdri, before.sdri,
        pb.params, pb.macs as f64 / 1e9, after.si_sdr, after.si_sdri, after.sdri,
        check.trials.iter().map(|t| format!("{} {:.1e}", if t.passed { "pass" } else { "FAIL" }, t.rel_err)).collect::<Vec<_>>().join(", "),
        bench::markdown(&rows)
    );
    onnx::write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&json)
            .map_err(|e| Error::Other(e.to_string()))?
            .as_bytes(),
    )?;
    onnx::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(dir)
}
