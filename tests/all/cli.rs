//! The command line as a build pipeline sees it: JSON keys, clear errors, nothing written on
//! failure, no overwriting of the input.
use crate::common;
use std::process::Command;

fn sepprune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sepprune"))
}

#[test]
fn inspect_json_has_the_documented_keys() {
    let out = sepprune()
        .args(["inspect", "--json"])
        .arg(common::real_model())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["params", "macs", "regions", "groups", "separator_coverage"] {
        assert!(v.get(k).is_some(), "missing key {k}");
    }
    assert_eq!(v["groups"].as_array().unwrap().len(), 27);
}

#[test]
fn bad_masks_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let masks = dir.path().join("m.json");
    std::fs::write(
        &masks,
        r#"{"format":"sepprune-masks/1","groups":{"500":{"size":8,"keep":[0]}}}"#,
    )
    .unwrap();
    let out_path = dir.path().join("slim.onnx");
    let out = sepprune()
        .arg("prune")
        .arg(common::real_model())
        .arg("-o")
        .arg(&out_path)
        .arg("--masks")
        .arg(&masks)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group 500 does not exist"), "{err}");
    assert!(!out_path.exists(), "a failed prune wrote its output");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "stray temporary files"
    );
}

#[test]
fn prune_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.onnx");
    std::fs::copy(common::real_model(), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let out = sepprune()
        .arg("prune")
        .arg(&copy)
        .arg("-o")
        .arg(&copy)
        .args(["--ratio", "0.3", "--no-verify"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}

#[test]
fn a_file_that_is_not_onnx_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"not a protobuf at all \xff\xff\xff").unwrap();
    let out = sepprune().arg("inspect").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.onnx"), "{err}");
}

#[test]
fn prune_with_refit_reports_the_layers_and_a_bad_data_dir_writes_nothing() {
    use sepprune::onnx::encode;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    std::fs::write(&model, encode(&common::tiny_tasnet())).unwrap();
    let data = dir.path().join("set");
    common::tiny_set(&data, 3);
    let run = |out: &std::path::Path, extra: &[&str]| {
        sepprune()
            .arg("prune")
            .arg(&model)
            .arg("-o")
            .arg(out)
            .args(["--ratio", "0.4", "--seconds", "0.025", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let (plain, refit) = (dir.path().join("plain.onnx"), dir.path().join("refit.onnx"));
    assert!(run(&plain, &[]).status.success());
    let out = run(&refit, &["--refit", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = v["refit"]["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        assert!(l["error_after"].as_f64().unwrap() <= l["error_before"].as_f64().unwrap() + 1e-5);
    }
    // same graph and shapes, other weights
    let (a, b) = (
        std::fs::read(&plain).unwrap(),
        std::fs::read(&refit).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b);
    // a data directory that does not exist: named in the error, nothing written
    let bad = dir.path().join("bad.onnx");
    let out = run(&bad, &["--refit", "/nonexistent/set"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/set"));
    assert!(!bad.exists());
}

/// `--config` gives `compress` its options and the command line overrides them; a failed
/// quality gate exits with status 2 and leaves the report and `OUT.report/rejected.onnx`,
/// not OUT; an unknown key is an error that names the file and the option.
#[test]
fn compress_reads_a_config_and_a_failed_quality_gate_exits_2_without_writing_out() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    common::tiny_set(&set, 4);
    let model = dir.path().join("tiny.onnx");
    sepprune::onnx::save(&common::tiny_tasnet(), &model, None, false).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[compress]\ntarget_macs = 0.6\nstructure = \"channels\"\nmethod = \"l1\"\n\
         finetune_steps = 2\nseconds = 0.025\nruntime = [\"tract\"]\nruns = 2\n\
         no_refit = true\nfail_below = 1000.0\n",
    )
    .unwrap();
    let run = |out: &std::path::Path, extra: &[&str]| {
        sepprune()
            .arg("compress")
            .arg(&model)
            .arg("--data")
            .arg(&set)
            .arg("-o")
            .arg(out)
            .arg("--config")
            .arg(&config)
            .args(extra)
            .output()
            .unwrap()
    };
    let rejected = dir.path().join("rejected.onnx");
    let r = run(&rejected, &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("quality gate") && err.contains("--fail-below 1000"),
        "{err}"
    );
    assert!(!rejected.exists(), "a rejected model was written to OUT");
    let report = dir.path().join("rejected.onnx.report");
    assert!(report.join("rejected.onnx").exists());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["quality_gate"]["fail_below"], 1000.0);
    assert!(json["quality_gate"]["rejected"].is_string());
    // the file's structure and method were used: 60% of the separator's MACs, by L1
    assert_eq!(json["structure"], "channels");
    assert_eq!(json["method"], "L1");
    let accepted = dir.path().join("accepted.onnx");
    let r = run(&accepted, &["--fail-below", "-1000"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(accepted.exists());
    std::fs::write(&config, "[compress]\nbogus = 1\n").unwrap();
    let r = run(&dir.path().join("never.onnx"), &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("c.toml") && err.contains("--bogus"), "{err}");
    assert!(!dir.path().join("never.onnx").exists());
}

#[test]
fn gate_json_names_the_output_and_counts_the_gates() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("gated.onnx");
    let out = sepprune()
        .arg("gate")
        .arg(common::real_model())
        .arg("-o")
        .arg(&out_path)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gates"], 27);
    assert_eq!(v["output"].as_str().unwrap(), out_path.to_str().unwrap());
    assert!(out_path.exists());
}

/// `learn --method self-pinching --slim-out`: one pass gives the pruned, fine-tuned model,
/// verified exact, with fewer params, beside the trained unpruned model and the masks.
#[test]
fn self_pinching_writes_the_slim_trained_model_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("set");
    common::tiny_set(&data, 2);
    let model = dir.path().join("tiny.onnx");
    sepprune::onnx::save(&common::tiny_tasnet(), &model, None, false).unwrap();
    let (trained, slim, masks) = (
        dir.path().join("trained.onnx"),
        dir.path().join("slim.onnx"),
        dir.path().join("masks.json"),
    );
    let out = sepprune()
        .arg("learn")
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .args([
            "--distill",
            "--method",
            "self-pinching",
            "--target-macs",
            "0.6",
        ])
        .args([
            "--scope",
            "all",
            "--iters",
            "6",
            "--warmup",
            "2",
            "--seconds",
            "0.025",
        ])
        .args(["--finetune-steps", "2", "--json", "-o"])
        .arg(&masks)
        .arg("--model-out")
        .arg(&trained)
        .arg("--slim-out")
        .arg(&slim)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // all gates at 1, the learned masks and two random masks, all passed (else no file)
    assert!(v["slim"]["checks"].as_u64().unwrap() >= 4, "{}", v["slim"]);
    let p = |m: &std::path::Path| {
        let ir = sepprune::ir::Ir::new(sepprune::onnx::load(m).unwrap(), 1000).unwrap();
        sepprune::analysis::profile(&ir).params
    };
    assert!(p(&slim) < p(&trained), "{} vs {}", p(&slim), p(&trained));
    assert_eq!(v["slim"]["params"].as_u64(), Some(p(&slim)));
    assert_eq!(p(&trained), p(&model));
}

/// `--input` declares a model's inputs for learn, finetune and compress as for inspect and
/// prune: a declaration that fits is used, one naming no input is an error naming the file
/// and the input, and nothing is written.
#[test]
fn learn_finetune_and_compress_take_input_declarations() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("set");
    common::tiny_set(&data, 2);
    let model = dir.path().join("tiny.onnx");
    sepprune::onnx::save(&common::tiny_tasnet(), &model, None, false).unwrap();
    let masks = dir.path().join("masks.json");
    let learn = |decl: &str| {
        sepprune()
            .arg("learn")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .args(["--target-macs", "0.6", "--iters", "2", "--seconds", "0.025"])
            .args(["--input", decl, "-o"])
            .arg(&masks)
            .output()
            .unwrap()
    };
    let ok = learn("x=1,1,T");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(masks.exists());
    std::fs::remove_file(&masks).unwrap();
    let bad = learn("feats=1,T,80");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("tiny.onnx") && err.contains("'feats'"),
        "{err}"
    );
    assert!(!masks.exists());
    for cmd in ["finetune", "compress"] {
        let out_model = dir.path().join(format!("{cmd}.onnx"));
        let out = sepprune()
            .arg(cmd)
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .args(["--input", "feats=1,T,80", "-o"])
            .arg(&out_model)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("'feats'"),
            "{cmd}: {err}"
        );
        assert!(!out_model.exists(), "{cmd} wrote its output");
    }
}
