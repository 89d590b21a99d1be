//! Command-line flags. Every limit has a default so `loadgen` alone runs a short, sane load
//! against a local service; bad values are refused by clap with exit code 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use reqwest::Url;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "Realistic load for the shop sample service, ending with a RED table per route"
)]
pub struct Args {
    /// Service base URL; repeat the flag for several replicas (requests go round-robin).
    #[arg(long = "base-url", value_parser = parse_base_url, default_value = "http://127.0.0.1:8080")]
    pub base_urls: Vec<Url>,

    /// Stop after this long (e.g. `500ms`, `30s`, `2m`); the run also stops at `--requests`.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,

    /// Stop after this many HTTP requests (whichever of this and `--duration` comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value_t = 20_000)]
    pub requests: u64,

    /// Concurrent workers, each running one scenario (a request or a short request sequence) at a time.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096), default_value_t = 32)]
    pub concurrency: u32,

    /// RS256 private key (PEM) the bearer tokens are signed with.
    #[arg(long, default_value = "sample-service/dev-keys/jwt-private.pem")]
    pub jwt_private_key: PathBuf,

    /// `kid` header of the minted tokens.
    #[arg(long, default_value = "dev-1")]
    pub jwt_kid: String,

    /// `iss` claim of the minted tokens.
    #[arg(long, default_value = "shop-dev")]
    pub jwt_issuer: String,

    /// `aud` claim of the minted tokens.
    #[arg(long, default_value = "shop-api")]
    pub jwt_audience: String,

    /// Number of distinct users (`sub` = `user-1` … `user-N`), each with its own token.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000), default_value_t = 20)]
    pub principals: u32,

    /// Seeded product ids are assumed to be 1..=N; reads are Zipf-distributed over them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000), default_value_t = 200)]
    pub products: u32,

    /// Zipf exponent of the product reads (higher = hotter hot keys).
    #[arg(long, value_parser = parse_zipf_exponent, default_value_t = 1.1)]
    pub zipf_exponent: f64,

    /// Seed of the traffic mix; the same seed gives the same sequence of scenarios per worker.
    /// Without it a random seed is drawn and printed.
    #[arg(long)]
    pub seed: Option<u64>,

    /// How often one principal bursts above the rate limit (`0s` turns bursts off).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub burst_every: Duration,

    /// Requests in one burst (it stops early at the first 429 or 503).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000), default_value_t = 200)]
    pub burst_size: u32,

    /// Requests of a burst in flight at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024), default_value_t = 16)]
    pub burst_parallel: u32,

    /// Timeout of one HTTP request (a timed-out request counts as a transport error).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub request_timeout: Duration,

    /// Do not send W3C `traceparent` headers (by default every request starts a sampled trace).
    #[arg(long)]
    pub no_traceparent: bool,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("`{s}`: the scheme must be http or https"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(format!("`{s}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{s}`: a base URL takes no query or fragment"));
    }
    Ok(url)
}

/// `250ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 500ms, 30s, 2m, 1h)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds > 366.0 * 24.0 * 3600.0 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_zipf_exponent(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=10.0).contains(&v) {
        return Err(format!("`{s}`: the Zipf exponent must be within 0..=10"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        assert!(parse_duration("").unwrap_err().contains("not a duration"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("1e9h").is_err());
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("ftp://x").unwrap_err().contains("scheme"));
        assert!(parse_base_url("localhost:8080").is_err());
        assert!(parse_base_url("http://h/?a=1")
            .unwrap_err()
            .contains("query"));
    }

    #[test]
    fn defaults_and_repeated_base_urls() {
        let args = Args::try_parse_from([
            "loadgen",
            "--base-url",
            "http://127.0.0.1:8080",
            "--base-url",
            "http://127.0.0.1:8081",
            "--requests",
            "10",
        ])
        .unwrap();
        assert_eq!(args.base_urls.len(), 2);
        assert_eq!(args.requests, 10);
        assert_eq!(args.concurrency, 32);
        assert_eq!(args.principals, 20);
        assert_eq!(args.products, 200);
        assert!(Args::try_parse_from(["loadgen", "--requests", "0"]).is_err());
        assert!(Args::try_parse_from(["loadgen", "--concurrency", "0"]).is_err());
    }
}
