//! Audio files: WAV (PCM 8/16/24/32-bit, IEEE float 32 and 64) and FLAC reading, WAV
//! writing (float 32), mono mixdown, and resampling to the model's rate (rubato, sinc
//! interpolation).
//!
//! hound reads every WAV format except 64-bit float, which the shared data uses; that one is
//! read from the RIFF chunks directly. FLAC is decoded by symphonia.
use crate::error::{Error, Result};
use std::path::Path;

/// File extensions [`read`] decodes (lower case).
pub const EXTENSIONS: &[&str] = &["wav", "flac"];

/// Whether `path` names an audio file [`read`] decodes (by extension, any case).
pub fn is_audio(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Mono samples in [-1, 1] (channels averaged) and the sample rate in Hz, from a WAV or
/// FLAC file.
///
/// Errors: [`Error::Audio`] naming the file for an unreadable or unsupported file.
pub fn read(path: &Path) -> Result<(Vec<f32>, u32)> {
    let bad = |msg: String| Error::Audio {
        path: path.into(),
        msg,
    };
    let flac = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("flac"));
    let (interleaved, channels, rate) = if flac {
        read_symphonia(path)?
    } else {
        read_wav(path)?
    };
    if rate == 0 {
        return Err(bad("sample rate 0".into()));
    }
    let channels = channels.max(1);
    let mono = interleaved
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / channels as f32)
        .collect();
    Ok((mono, rate))
}

/// Interleaved samples, channel count and rate of a file symphonia decodes (FLAC).
fn read_symphonia(path: &Path) -> Result<(Vec<f32>, usize, u32)> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;
    let bad = |msg: String| Error::Audio {
        path: path.into(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(e) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(e);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| bad(e.to_string()))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| bad("no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| bad("no audio codec parameters".into()))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| bad(e.to_string()))?;
    let (mut out, mut chunk) = (Vec::<f32>::new(), Vec::<f32>::new());
    let (mut channels, mut rate) = (0usize, params.sample_rate.unwrap_or(0));
    while let Some(packet) = format.next_packet().map_err(|e| bad(e.to_string()))? {
        if packet.track_id != track_id {
            continue;
        }
        let buf = decoder.decode(&packet).map_err(|e| bad(e.to_string()))?;
        channels = buf.spec().channels().count();
        rate = buf.spec().rate();
        buf.copy_to_vec_interleaved(&mut chunk);
        out.extend_from_slice(&chunk);
    }
    Ok((out, channels, rate))
}

/// Interleaved samples, channel count and rate of a WAV file.
fn read_wav(path: &Path) -> Result<(Vec<f32>, usize, u32)> {
    let bad = |msg: String| Error::Audio {
        path: path.into(),
        msg,
    };
    Ok(match hound::WavReader::open(path) {
        Ok(mut r) => {
            let spec = r.spec();
            let v: Vec<f32> = match spec.sample_format {
                hound::SampleFormat::Float => r
                    .samples::<f32>()
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad(e.to_string()))?,
                hound::SampleFormat::Int => {
                    let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
                    r.samples::<i32>()
                        .map(|s| s.map(|s| s as f32 * scale))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| bad(e.to_string()))?
                }
            };
            (v, spec.channels as usize, spec.sample_rate)
        }
        Err(_) => read_float64(path)?,
    })
}

/// 64-bit IEEE float WAV (format tag 3 or WAVE_FORMAT_EXTENSIBLE), which hound rejects.
fn read_float64(path: &Path) -> Result<(Vec<f32>, usize, u32)> {
    let bad = |msg: &str| Error::Audio {
        path: path.into(),
        msg: msg.into(),
    };
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let (mut pos, mut fmt, mut data) = (12usize, None, None);
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let body = &b[pos + 8..(pos + 8 + len).min(b.len())];
        match id {
            b"fmt " if body.len() >= 16 => fmt = Some(body),
            b"data" => data = Some(body),
            _ => {}
        }
        pos += 8 + len + (len & 1);
    }
    let (fmt, data) = (
        fmt.ok_or_else(|| bad("no fmt chunk"))?,
        data.ok_or_else(|| bad("no data chunk"))?,
    );
    let tag = u16::from_le_bytes([fmt[0], fmt[1]]);
    let channels = u16::from_le_bytes([fmt[2], fmt[3]]) as usize;
    let rate = u32::from_le_bytes(fmt[4..8].try_into().expect("4 bytes"));
    let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
    if !(tag == 3 || tag == 0xFFFE) || bits != 64 {
        return Err(bad(&format!(
            "unsupported WAV format (tag {tag}, {bits} bits)"
        )));
    }
    let v = data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
        .collect();
    Ok((v, channels, rate))
}

/// Reads a WAV or FLAC file at `rate` Hz, resampling when its own rate differs.
pub fn read_at(path: &Path, rate: u32) -> Result<Vec<f32>> {
    let (x, r) = read(path)?;
    if r == rate {
        return Ok(x);
    }
    resample(&x, r, rate).map_err(|msg| Error::Audio {
        path: path.into(),
        msg,
    })
}

/// Band-limited resampling (rubato sinc, whole signal in one chunk, delay compensated).
pub fn resample(x: &[f32], from: u32, to: u32) -> std::result::Result<Vec<f32>, String> {
    use rubato::{
        Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
    };
    let params = SincInterpolationParameters {
        sinc_len: 128,
        f_cutoff: 0.95,
        interpolation: SincInterpolationType::Linear,
        oversampling_factor: 128,
        window: WindowFunction::BlackmanHarris2,
    };
    let ratio = to as f64 / from as f64;
    let mut r = SincFixedIn::<f64>::new(ratio, 1.0, params, x.len().max(1), 1)
        .map_err(|e| e.to_string())?;
    let delay = r.output_delay();
    let input = vec![x.iter().map(|&v| v as f64).collect::<Vec<_>>()];
    let mut out = r
        .process(&input, None)
        .map_err(|e| e.to_string())?
        .remove(0);
    let tail = r
        .process_partial::<Vec<f64>>(None, None)
        .map_err(|e| e.to_string())?
        .remove(0);
    out.extend(tail);
    let n = (x.len() as f64 * ratio).round() as usize;
    Ok(out
        .into_iter()
        .skip(delay)
        .take(n)
        .map(|v| v as f32)
        .collect())
}

/// Writes mono float-32 WAV atomically.
pub fn write(path: &Path, x: &[f32], rate: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut buf, spec).map_err(|e| Error::Audio {
            path: path.into(),
            msg: e.to_string(),
        })?;
        for &v in x {
            w.write_sample(v).map_err(|e| Error::Audio {
                path: path.into(),
                msg: e.to_string(),
            })?;
        }
        w.finalize().map_err(|e| Error::Audio {
            path: path.into(),
            msg: e.to_string(),
        })?;
    }
    crate::onnx::write_atomic(path, &buf.into_inner())
}
