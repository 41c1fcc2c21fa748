//! Facts about this machine that alias policies may use (they cannot look them up).

use std::str::FromStr;

/// Memory and backend, as handed to alias-policy plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub free_memory_bytes: u64,
    pub total_memory_bytes: u64,
    pub backend: String,
}

impl HostFacts {
    /// Reads `/proc/meminfo` where there is one; elsewhere memory is reported as 0
    /// (unknown), which memory-aware policies treat as "nothing fits".
    pub fn detect(backend: &str) -> Self {
        let (free, total) = std::fs::read_to_string("/proc/meminfo")
            .map(|text| (meminfo_bytes(&text, "MemAvailable:"), meminfo_bytes(&text, "MemTotal:")))
            .unwrap_or((None, None));
        Self {
            free_memory_bytes: free.unwrap_or(0),
            total_memory_bytes: total.unwrap_or(0),
            backend: backend.to_string(),
        }
    }
}

fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// A byte size written for humans: `16GiB`, `512MiB`, `2.5GB`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: f64 = number.parse().map_err(|_| format!("`{s}` is not a size like 16GiB or 512MiB"))?;
        let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kib" => 1024.0,
            "kb" => 1e3,
            "m" | "mib" => 1024.0 * 1024.0,
            "mb" => 1e6,
            "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
            "gb" => 1e9,
            "t" | "tib" => 1024.0_f64.powi(4),
            "tb" => 1e12,
            other => return Err(format!("unknown size unit `{other}` (use B, MiB, GiB, MB, GB)")),
        };
        let bytes = value * scale;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(Self(bytes as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!("16GiB".parse(), Ok(ByteSize(16 << 30)));
        assert_eq!("512 MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("2GB".parse(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("1024".parse(), Ok(ByteSize(1024)));
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("5 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn meminfo_is_read() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(meminfo_bytes(text, "MemAvailable:"), Some(12_000_000 * 1024));
        assert_eq!(meminfo_bytes(text, "Nope:"), None);
    }
}
