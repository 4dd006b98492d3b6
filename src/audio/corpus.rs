//! Speech and noise corpora given as directories, in any layout (WAV and FLAC, searched
//! recursively), split by speaker and by noise category so that validation and test
//! material is never heard in training.
//!
//! - **Speaker** of a speech file: the first folder under the directory given (LibriSpeech's
//!   `SPEAKER/CHAPTER/*.flac`, or one folder per speaker); for a file directly in the
//!   directory, its name up to the first `-` or `_` (LibriSpeech's flat
//!   `SPEAKER-CHAPTER-UTT.flac`, `spk1_snt3.wav`), or the whole name when it has neither.
//!   A LibriSpeech `SPEAKERS.TXT` in the directory gives each speaker's sex.
//! - **Noise category** of a noise file: the first folder under the directory given; for
//!   a file directly in it, its name without trailing digits, `-` and `_` (`Blacksmith2.wav`
//!   and `Blacksmith3.wav` are one category, `blacksmith`): recordings of one scene are kept
//!   together, so a test noise is a scene never heard, not another take of a known one.
//!
//! [`split`] shuffles the speakers and the categories with a seeded generator (sorted first,
//! so the split depends only on the names and the seed) and deals them to test, validation
//! and training: no speaker and no noise category is in two splits.
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One audio file of a corpus and the group it belongs to (speaker or noise category).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub path: PathBuf,
    /// Speaker (speech) or category (noise).
    pub group: String,
    /// Speaker sex (`F`/`M`) when a `SPEAKERS.TXT` gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<String>,
}

/// Speech and noise files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corpus {
    pub speech: Vec<Source>,
    pub noise: Vec<Source>,
}

/// The three splits of a corpus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splits {
    /// `sepprune-splits/1`.
    pub format: String,
    pub seed: u64,
    pub train: Corpus,
    pub val: Corpus,
    pub test: Corpus,
}

/// Name of the file `mix --split-by` writes into each split's directory: that split's
/// [`Corpus`] (the files dynamic mixing draws from).
pub const SOURCES_FILE: &str = "sources.json";

/// Audio files under `dir`, recursively, sorted.
///
/// Errors: an unreadable directory.
pub fn audio_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let p = e.map_err(|e| Error::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if super::wav::is_audio(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The first folder of `path` under `root`, if `path` lies in a subfolder.
fn first_folder(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?;
    parts.next()?; // a file directly in root has one component
    Some(first.as_os_str().to_string_lossy().into_owned())
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The speaker of a speech file under `root` (module docs).
pub fn speaker_of(root: &Path, path: &Path) -> String {
    first_folder(root, path).unwrap_or_else(|| {
        let s = stem(path);
        s.split(['-', '_']).next().unwrap_or(&s).to_string()
    })
}

/// The category of a noise file under `root` (module docs).
pub fn category_of(root: &Path, path: &Path) -> String {
    first_folder(root, path).unwrap_or_else(|| {
        let s = stem(path);
        let t = s.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
        if t.is_empty() {
            s.clone()
        } else {
            t.to_string()
        }
        .to_lowercase()
    })
}

/// Speaker id -> sex from a LibriSpeech `SPEAKERS.TXT` (`ID | SEX | ...`) in `dir`.
fn speakers_txt(dir: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join("SPEAKERS.TXT")) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .filter(|(id, sex)| !id.is_empty() && (sex == "F" || sex == "M"))
        .collect()
}

impl Corpus {
    /// Scans speech and noise directories (module docs for speakers and categories).
    ///
    /// Errors: an unreadable directory; no speech or no noise file.
    pub fn scan(speech: &[PathBuf], noise: &[PathBuf]) -> Result<Corpus> {
        let mut c = Corpus::default();
        for d in speech {
            let sexes = speakers_txt(d);
            for p in audio_files(d)? {
                let group = speaker_of(d, &p);
                let sex = sexes.get(&group).cloned();
                c.speech.push(Source {
                    path: p,
                    group,
                    sex,
                });
            }
        }
        for d in noise {
            for p in audio_files(d)? {
                let group = category_of(d, &p);
                c.noise.push(Source {
                    path: p,
                    group,
                    sex: None,
                });
            }
        }
        let empty = |what: &str, dirs: &[PathBuf]| Error::Audio {
            path: dirs.first().cloned().unwrap_or_default(),
            msg: format!("no {what} files (.wav, .flac) in {dirs:?}"),
        };
        if c.speech.is_empty() {
            return Err(empty("speech", speech));
        }
        if c.noise.is_empty() {
            return Err(empty("noise", noise));
        }
        Ok(c)
    }

    /// The distinct speakers and noise categories.
    pub fn groups(&self) -> (BTreeSet<&str>, BTreeSet<&str>) {
        (
            self.speech.iter().map(|s| s.group.as_str()).collect(),
            self.noise.iter().map(|s| s.group.as_str()).collect(),
        )
    }

    /// Reads the [`SOURCES_FILE`] of a split directory, when there is one.
    ///
    /// Errors: a file that exists but does not parse.
    pub fn of_split(dir: &Path) -> Result<Option<Corpus>> {
        let p = dir.join(SOURCES_FILE);
        if !p.exists() {
            return Ok(None);
        }
        let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&s).map(Some).map_err(Error::json(&p))
    }
}

/// Deals `items`' groups to (test, val, train) after a seeded shuffle: `test` and `val` of
/// the groups each (at least one group each), the rest to training.
fn deal(items: &[Source], val: f64, test: f64, seed: u64) -> Result<[Vec<Source>; 3]> {
    let mut groups: Vec<&str> = items
        .iter()
        .map(|s| s.group.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let n = groups.len();
    if n < 3 {
        return Err(Error::Data(format!(
            "splitting needs at least 3 groups, found {n} ({groups:?})"
        )));
    }
    groups.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n_test = ((n as f64 * test).round() as usize).clamp(1, n - 2);
    let n_val = ((n as f64 * val).round() as usize).clamp(1, n - 1 - n_test);
    let which = |g: &str| {
        let i = groups.iter().position(|x| *x == g).expect("a listed group");
        if i < n_test {
            0
        } else if i < n_test + n_val {
            1
        } else {
            2
        }
    };
    let mut out: [Vec<Source>; 3] = Default::default();
    for s in items {
        out[which(&s.group)].push(s.clone());
    }
    Ok(out)
}

/// What [`split`] keeps apart between splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    /// No speaker in two splits.
    Speaker,
    /// No noise category in two splits.
    Noise,
}

/// Splits a corpus by speaker and/or by noise category (module docs): `val` and `test` are
/// the shares of speakers and of categories in validation and test. A dimension not in
/// `by` is not split: every split gets all of it.
///
/// Errors: fewer than 3 speakers or 3 noise categories to split.
pub fn split(c: &Corpus, by: &[SplitBy], val: f64, test: f64, seed: u64) -> Result<Splits> {
    let all = |v: &[Source]| [v.to_vec(), v.to_vec(), v.to_vec()];
    let [s_test, s_val, s_train] = if by.contains(&SplitBy::Speaker) {
        deal(&c.speech, val, test, seed)?
    } else {
        all(&c.speech)
    };
    let [n_test, n_val, n_train] = if by.contains(&SplitBy::Noise) {
        deal(&c.noise, val, test, seed ^ 0x5EED)?
    } else {
        all(&c.noise)
    };
    Ok(Splits {
        format: "sepprune-splits/1".into(),
        seed,
        train: Corpus {
            speech: s_train,
            noise: n_train,
        },
        val: Corpus {
            speech: s_val,
            noise: n_val,
        },
        test: Corpus {
            speech: s_test,
            noise: n_test,
        },
    })
}
