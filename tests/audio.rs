//! WAV reading (PCM16 and float64 from ../shared/data) and metric properties.
use sepprune::audio::{metrics, wav};
use std::path::PathBuf;

fn shared(p: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(p);
    assert!(
        p.exists(),
        "MISSING {}: these tests need ../shared/data",
        p.display()
    );
    p
}

#[test]
fn float64_mixture_is_a_scaled_sum_of_its_references() {
    let (m, r) = wav::read(&shared("separation/mixture_1.wav")).unwrap();
    let (a, _) = wav::read(&shared("separation/source1_1.wav")).unwrap();
    let (b, _) = wav::read(&shared("separation/source2_1.wav")).unwrap();
    assert_eq!(r, 16000);
    assert_eq!(m.len(), a.len());
    // the stored mixture is a rescaled sum of the references
    let sum: Vec<f32> = a.iter().zip(&b).map(|(&a, &b)| a + b).collect();
    let fit = metrics::si_sdr(&m, &sum);
    assert!(
        fit > 40.0,
        "mixture is not a scaled s1 + s2 (SI-SDR {fit} dB)"
    );
    // PIT: the references score +inf-like SI-SDR in either order
    let s = metrics::score(&[b.clone(), a.clone()], &[a.clone(), b.clone()], &m);
    assert!(s.si_sdr > 80.0 && s.si_sdri > 70.0, "{s:?}");
}

#[test]
fn pcm16_speech_reads_in_range() {
    let (x, r) = wav::read(&shared("speech/spk1_snt1.wav")).unwrap();
    assert_eq!(r, 16000);
    assert!(x.len() > 16000);
    let peak = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    assert!(peak > 0.01 && peak <= 1.0);
}

#[test]
fn both_metrics_are_scale_invariant_and_only_sdr_forgives_a_short_filter() {
    let (x, _) = wav::read(&shared("speech/spk1_snt1.wav")).unwrap();
    let noisy: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| v + 0.01 * ((i * 7919 % 101) as f32 / 50.0 - 1.0))
        .collect();
    let scaled: Vec<f32> = noisy.iter().map(|&v| 3.0 * v).collect();
    assert!((metrics::si_sdr(&noisy, &x) - metrics::si_sdr(&scaled, &x)).abs() < 1e-6);
    assert!((metrics::sdr(&noisy, &x) - metrics::sdr(&scaled, &x)).abs() < 1e-3);
    // a 5-sample delay (0.3 ms) is a distortion that BSS Eval's 512-tap filter absorbs
    let delayed: Vec<f32> = (0..noisy.len())
        .map(|i| if i >= 5 { noisy[i - 5] } else { 0.0 })
        .collect();
    let (sdr, si) = (metrics::sdr(&delayed, &x), metrics::si_sdr(&delayed, &x));
    assert!(sdr > metrics::sdr(&noisy, &x) - 1.0, "SDR {sdr}");
    assert!(si < sdr - 10.0, "SI-SDR {si}, SDR {sdr}");
}

#[test]
fn resampling_keeps_a_tone() {
    let x: Vec<f32> = (0..8000)
        .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 8000.0).sin())
        .collect();
    let y = wav::resample(&x, 8000, 16000).unwrap();
    assert_eq!(y.len(), 16000);
    // frequency (zero crossings: 2 per period) and amplitude (RMS of a unit sine) survive
    let mid = &y[400..15600];
    let crossings = mid
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count() as f64;
    let expected = 2.0 * 440.0 * mid.len() as f64 / 16000.0;
    assert!(
        (crossings - expected).abs() <= 2.0,
        "{crossings} zero crossings, expected {expected}"
    );
    let rms = (mid.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
    assert!(
        (rms - std::f64::consts::FRAC_1_SQRT_2).abs() < 0.01,
        "rms {rms}"
    );
}

#[test]
fn missing_reference_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mix")).unwrap();
    std::fs::create_dir_all(dir.path().join("s1")).unwrap();
    wav::write(&dir.path().join("mix/a.wav"), &[0.1, 0.2, 0.3], 16000).unwrap();
    let err = sepprune::audio::dataset::load(dir.path(), 16000)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("a.wav") && err.contains("missing"), "{err}");
}
