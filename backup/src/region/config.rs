//! `HOME/regions.toml`: the regions, `min_copies`, the part size and the deletion delay,
//! parsed strictly (unknown keys refused) and validated; sizes and durations are parsed with
//! overflow checks (a huge grace or delay is refused, never wrapped around).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn default_min_copies() -> u32 {
    2
}

fn default_part_size() -> String {
    "8MiB".into()
}

fn default_deletion_delay() -> String {
    "24h".into()
}

pub use cairn_units::{parse_duration, parse_size};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionsConfig {
    #[serde(default = "default_min_copies")]
    pub min_copies: u32,
    #[serde(default = "default_part_size")]
    pub part_size: String,
    /// How long an unreferenced object waits in the deletion queue.
    #[serde(default = "default_deletion_delay")]
    pub deletion_delay: String,
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl RegionsConfig {
    pub fn path(home: &Path) -> PathBuf {
        home.join("regions.toml")
    }

    /// The embedded default: two local-directory regions in the data directory.
    pub fn embedded(home: &Path) -> RegionsConfig {
        let region = |n: &str| RegionConfig {
            name: n.to_string(),
            url: format!("file://{}", home.join("regions").join(n).display()),
            endpoint: None,
            s3_region: None,
            credentials_file: None,
            allow_http: false,
            tags: BTreeMap::new(),
        };
        RegionsConfig {
            min_copies: 2,
            part_size: default_part_size(),
            deletion_delay: default_deletion_delay(),
            regions: vec![region("region-a"), region("region-b")],
        }
    }

    /// Reads `HOME/regions.toml`, writing the embedded default first when it is missing.
    pub fn load_or_init(home: &Path) -> Result<RegionsConfig> {
        let path = Self::path(home);
        if !path.exists() {
            let c = Self::embedded(home);
            c.save(home)?;
            return Ok(c);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        let c: RegionsConfig = toml::from_str(&text)
            .map_err(|e| Error::Refused(format!("{}: {}", path.display(), e.to_string().trim())))?;
        c.validate(&path)?;
        Ok(c)
    }

    pub fn save(&self, home: &Path) -> Result<()> {
        let path = Self::path(home);
        let text = format!(
            "# Cairn regions: where layers are shipped. See docs/OPERATIONS.md.\n{}",
            toml::to_string_pretty(self).map_err(|e| Error::Refused(e.to_string()))?
        );
        cairn_engine::fsutil::write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Error::Refused(format!("{}: {m}", path.display()));
        if self.regions.is_empty() {
            return Err(bad("no [[region]] is configured".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.regions {
            if !seen.insert(&r.name) {
                return Err(bad(format!("region '{}' is defined twice", r.name)));
            }
            cairn_engine::engine::validate_name("region", &r.name)
                .map_err(|e| bad(e.to_string()))?;
            if !["file://", "s3://", "gs://", "az://"]
                .iter()
                .any(|p| r.url.starts_with(p))
            {
                return Err(bad(format!(
                    "region '{}': url '{}' must start with file://, s3://, gs:// or az://",
                    r.name, r.url
                )));
            }
        }
        if self.min_copies == 0 || self.min_copies as usize > self.regions.len() {
            return Err(bad(format!(
                "min_copies = {} but {} region(s) are configured",
                self.min_copies,
                self.regions.len()
            )));
        }
        let part = parse_size(&self.part_size).map_err(|e| bad(format!("part_size: {e}")))?;
        if part < 5 << 20 {
            return Err(bad("part_size must be at least 5MiB (S3's minimum)".into()));
        }
        parse_duration(&self.deletion_delay).map_err(|e| bad(format!("deletion_delay: {e}")))?;
        Ok(())
    }

    pub fn part_size(&self) -> u64 {
        parse_size(&self.part_size).unwrap_or(8 << 20)
    }

    pub fn deletion_delay(&self) -> Duration {
        parse_duration(&self.deletion_delay).unwrap_or(Duration::from_secs(86400))
    }
}
