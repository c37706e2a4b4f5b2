//! Where the registry keeps its data: read from the registry's own `config.yml`, or from `--storage`.
//!
//! Operators hand regsweep the very file their registry runs with, usually next to the `REGISTRY_*`
//! variables of its container. If we read that file differently from the registry, we collect a
//! different directory from the one the registry serves. So this module follows distribution's
//! `configuration/parser.go` and its storage drivers rather than reading the YAML "naturally":
//!
//! - `storage` is a map whose one key other than `cache`, `delete`, `maintenance`, `redirect` and
//!   `tag` names the driver; zero or several drivers are errors. A plain string (`storage: s3`)
//!   names a driver without parameters. A driver with no body (`filesystem:`) has no parameters.
//! - The filesystem driver reads exactly the key `rootdirectory` (default `/var/lib/registry`);
//!   like the registry, we ignore `rootDirectory` or other spellings.
//! - YAML merge keys (`<<: *anchor`) are applied, as Go's YAML v2 does.
//! - `REGISTRY_STORAGE*` variables override the file, applied in byte order of their names, so
//!   `REGISTRY_STORAGE=s3` replaces the section before `REGISTRY_STORAGE_S3_BUCKET` fills it in. The
//!   rest of the name, split on `_`, is a key path (so keys that contain `_` cannot be set). It
//!   descends into existing keys matched case-insensitively, creates missing or null ones, and sets
//!   the last key in lower case. The value is YAML. If it does not parse, the registry refuses
//!   to start, and so do we. A path that runs into an existing scalar or list is ignored, as the
//!   registry ignores it.
//! - Four drivers are read: `filesystem`, `s3` (also registered as `s3aws`), `azure` and `gcs`;
//!   any other (`inmemory`, `swift`, `oss`, …) is [`ConfigError::UnsupportedDriver`]. The object
//!   stores read the registry's keys (2.8 and 3.x), exactly in lower case: `s3`: `bucket`,
//!   `region`, `regionendpoint`, `forcepathstyle`, `secure`, `skipverify`, `rootdirectory`,
//!   `accesskey`, `secretkey`, `sessiontoken`; `azure`: `accountname`, `accountkey`, `container`,
//!   `realm`, `serviceurl`, `rootdirectory`, `credentials` (`type`: `shared_key`, `client_secret`
//!   with `clientid`/`tenantid`/`secret`, `default_credentials`; like the registry, a non-empty
//!   `accountkey` wins); `gcs`: `bucket`, `keyfile`, `credentials` (a service-account map, kept as
//!   JSON). Strings may be given as numbers or booleans (the registry formats them), booleans as
//!   strings Go's `strconv.ParseBool` accepts (`"true"`, `"false"`, …); `~` and `""` are absent.
//!   Their `rootdirectory` is trimmed of `/` (`""` is the bucket root). A missing required key is
//!   [`ConfigError::Missing`]. Keys we do not need (`chunksize`, `v4auth`, …) are ignored. Secrets
//!   are held in [`Secret`], which never prints.
//! - `--storage` takes `file://` or a path, `s3://bucket/root?endpoint=…&region=…&force_path_style=…&skip_verify=…`,
//!   `az://container/root?account=NAME&endpoint=…` (or `azure://`) and `gs://bucket/root`;
//!   object-store credentials then come from the environment.
//!
//! We are stricter than the registry where it would accept nonsense. It turns any `rootdirectory`
//! into a string (`~` becomes the directory `<nil>`, `""` the filesystem root). We only accept a
//! non-empty string. We also refuse `REGISTRY_` names with an empty segment (`REGISTRY_STORAGE_`),
//! which would create a nameless driver. Other `REGISTRY_*` variables are ignored: they cannot
//! move the storage, and we do not check sections we never read.

use std::io;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

const DEFAULT_ROOT_DIRECTORY: &str = "/var/lib/registry";

/// Keys under `storage` that configure the registry rather than name a driver.
const NOT_DRIVERS: [&str; 5] = ["cache", "delete", "maintenance", "redirect", "tag"];

const URL_FORMS: &str = "file:///absolute/path, a filesystem path (./name if it contains `:`), \
                         s3://bucket[/prefix][?endpoint=URL&region=R&force_path_style=BOOL&skip_verify=BOOL], \
                         az://container[/prefix]?account=NAME[&endpoint=URL] (or azure://), gs://bucket[/prefix]";

/// The storage drivers this build reads, in the order error messages list them.
pub const SUPPORTED_DRIVERS: [&str; 4] = ["filesystem", "s3", "azure", "gcs"];

/// Where the registry keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// `storage.filesystem.rootdirectory` (default `/var/lib/registry`), or `file:///path`.
    Filesystem { root_directory: PathBuf },
    /// `storage.s3`, or `s3://bucket/root?…`.
    S3(S3Config),
    /// `storage.azure`, or `az://container/root?account=NAME…`.
    Azure(AzureConfig),
    /// `storage.gcs`, or `gs://bucket/root`.
    Gcs(GcsConfig),
}

/// A secret (keys, passwords): never printed. Debug and Display print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The `s3` driver's parameters that locate and open the bucket (others, like `chunksize`, are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `bucket`, required.
    pub bucket: String,
    /// `region`.
    pub region: Option<String>,
    /// `regionendpoint`, e.g. `http://127.0.0.1:9000` for MinIO.
    pub region_endpoint: Option<String>,
    /// `forcepathstyle` (registry 3.x); None when absent.
    pub force_path_style: Option<bool>,
    /// `secure`, default true.
    pub secure: bool,
    /// `skipverify`, default false.
    pub skip_verify: bool,
    /// `rootdirectory` without leading and trailing `/`; `""` is the bucket root.
    pub root_directory: String,
    /// `accesskey`; None (or empty) means the AWS credential chain from the environment.
    pub access_key: Option<String>,
    /// `secretkey`.
    pub secret_key: Option<Secret>,
    /// `sessiontoken`.
    pub session_token: Option<Secret>,
}

/// The `azure` driver's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureConfig {
    /// `accountname`, required.
    pub account_name: String,
    /// `accountkey`.
    pub account_key: Option<Secret>,
    /// `container`, required.
    pub container: String,
    /// `realm` (the registry's default: `core.windows.net`).
    pub realm: Option<String>,
    /// `serviceurl` (registry 3.x), e.g. `http://127.0.0.1:10000/devstoreaccount1` for Azurite.
    pub service_url: Option<String>,
    /// `rootdirectory` without leading and trailing `/`; `""` is the container root.
    pub root_directory: String,
    /// How to authenticate.
    pub credentials: AzureCredentials,
}

/// How the `azure` driver authenticates. Like the registry, a non-empty `accountkey` wins over `credentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// The account key (`accountkey` is then set): the default when `accountkey` is set, or `credentials: {type: shared_key}`.
    SharedKey,
    /// `credentials: {type: client_secret, clientid, tenantid, secret}`.
    ClientSecret {
        client_id: String,
        tenant_id: String,
        secret: Secret,
    },
    /// `credentials: {type: default_credentials}`, or neither `accountkey` nor `credentials`.
    DefaultCredentials,
}

/// The `gcs` driver's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsConfig {
    /// `bucket`, required.
    pub bucket: String,
    /// `keyfile`: a service-account key file. The registry prefers it over `credentials`.
    pub keyfile: Option<PathBuf>,
    /// The `credentials` map (service-account fields), re-serialised as JSON.
    pub credentials_json: Option<Secret>,
    /// `rootdirectory` without leading and trailing `/`; `""` is the bucket root.
    pub root_directory: String,
}

/// Why the storage could not be determined. File errors name the file, plus the
/// `REGISTRY_STORAGE*` variables that were applied to it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the registry config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the registry config {} is not valid YAML", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error(
        "{}: no storage driver configured (a key under `storage` other than {})",
        origin(path, overrides), NOT_DRIVERS.join(", ")
    )]
    NoDriver {
        path: PathBuf,
        overrides: Vec<String>,
    },
    #[error(
        "{}: several storage drivers configured ({}); the registry accepts exactly one",
        origin(path, overrides), drivers.join(", ")
    )]
    SeveralDrivers {
        path: PathBuf,
        overrides: Vec<String>,
        drivers: Vec<String>,
    },
    #[error("{}: `{key}` must be {expected}", origin(path, overrides))]
    IllTyped {
        path: PathBuf,
        overrides: Vec<String>,
        key: String,
        expected: &'static str,
    },
    #[error("{}: `{key}` is required", origin(path, overrides))]
    Missing {
        path: PathBuf,
        overrides: Vec<String>,
        key: String,
    },
    #[error(
        "the `{driver}` storage driver is not supported (supported: {})",
        SUPPORTED_DRIVERS.join(", ")
    )]
    UnsupportedDriver { driver: String },
    #[error("environment variable {name}: {reason}")]
    Env {
        name: String,
        reason: &'static str,
        #[source]
        source: Option<serde_yaml_ng::Error>,
    },
    #[error("--storage {url:?} is not one of: {URL_FORMS}")]
    StorageUrl { url: String },
    #[error("--storage {url:?}: {reason}")]
    StorageUrlParameter { url: String, reason: String },
}

fn origin(path: &Path, overrides: &[String]) -> String {
    match overrides {
        [] => path.display().to_string(),
        _ => format!("{} with {}", path.display(), overrides.join(", ")),
    }
}

/// Reads the registry's config file and applies `REGISTRY_*` overrides from `env` the way the registry does.
pub fn load_registry_config(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<StorageConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_registry_config(&text, path, env)
}

/// Parses the text of a config file (the part of load_registry_config after reading; `origin` names the file in errors).
pub fn parse_registry_config(
    text: &str,
    origin: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<StorageConfig, ConfigError> {
    let syntax = |source| ConfigError::Syntax {
        path: origin.to_owned(),
        source,
    };
    let mut document: Value = serde_yaml_ng::from_str(text).map_err(syntax)?;
    document.apply_merge().map_err(syntax)?;
    let overrides = storage_overrides(env)?;
    let source = Source {
        path: origin,
        overrides: overrides.iter().map(|o| o.name.clone()).collect(),
    };

    let mut storage = match document {
        Value::Null => Value::Null,
        Value::Mapping(mut top) => top.remove("storage").unwrap_or(Value::Null),
        _ => return Err(source.ill_typed("the document", "a mapping of sections")),
    };
    name_driver(&mut storage);
    for o in overrides {
        set(&mut storage, &o.path, o.value);
        name_driver(&mut storage);
    }
    source.storage_config(&storage)
}

/// Parses `--storage`: `file:///abs/path` or a plain absolute/relative filesystem path → Filesystem;
/// `s3://bucket/root?endpoint=URL&region=R&force_path_style=BOOL&skip_verify=BOOL` → S3 (credentials from
/// the environment; `secure` unless the endpoint is `http://`); `az://container/root?account=NAME&endpoint=URL`
/// (or `azure://`) → Azure with default credentials; `gs://bucket/root` → GCS; anything else → error.
/// Query values are percent-decoded; unknown or repeated query parameters are errors.
pub fn parse_storage_url(url: &str) -> Result<StorageConfig, ConfigError> {
    let bad = || ConfigError::StorageUrl {
        url: url.to_owned(),
    };
    let Some((scheme, rest)) = split_scheme(url) else {
        return match url {
            "" => Err(bad()),
            path => Ok(StorageConfig::Filesystem {
                root_directory: path.into(),
            }),
        };
    };
    let rest = rest.strip_prefix("//").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "file" {
        // RFC 8089 with an empty host: the path follows `file://` directly.
        if !rest.starts_with('/') || rest.contains(['?', '#']) {
            return Err(bad());
        }
        return Ok(StorageConfig::Filesystem {
            root_directory: percent_decode(rest).ok_or_else(bad)?.into(),
        });
    }
    if !matches!(scheme.as_str(), "s3" | "az" | "azure" | "gs") || rest.contains('#') {
        return Err(bad());
    }
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, query),
        None => (rest, ""),
    };
    let (bucket, root) = location.split_once('/').unwrap_or((location, ""));
    if bucket.is_empty() {
        return Err(bad()); // no bucket or container
    }
    let bucket = percent_decode(bucket).ok_or_else(bad)?;
    let root_directory = trim_root(&percent_decode(root).ok_or_else(bad)?).to_owned();
    let mut query = UrlQuery::parse(url, &scheme, query)?;
    let config = match scheme.as_str() {
        "s3" => {
            let region_endpoint = query.take("endpoint");
            let secure = !region_endpoint.as_deref().is_some_and(|endpoint| {
                endpoint
                    .get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
            });
            StorageConfig::S3(S3Config {
                bucket,
                region: query.take("region"),
                region_endpoint,
                force_path_style: query.take_bool("force_path_style")?,
                secure,
                skip_verify: query.take_bool("skip_verify")?.unwrap_or(false),
                root_directory,
                access_key: None,
                secret_key: None,
                session_token: None,
            })
        }
        "gs" => StorageConfig::Gcs(GcsConfig {
            bucket,
            keyfile: None,
            credentials_json: None,
            root_directory,
        }),
        _ => {
            let Some(account_name) = query.take("account") else {
                return Err(query.error(format!("{scheme}:// URL needs ?account=NAME")));
            };
            StorageConfig::Azure(AzureConfig {
                account_name,
                account_key: None,
                container: bucket,
                realm: None,
                service_url: query.take("endpoint"),
                root_directory,
                credentials: AzureCredentials::DefaultCredentials,
            })
        }
    };
    query.finish()?;
    Ok(config)
}

/// The query of a `--storage` URL: parameters are taken out one by one; what is left is unknown.
struct UrlQuery<'a> {
    url: &'a str,
    scheme: &'a str,
    params: Vec<(String, String)>,
}

impl<'a> UrlQuery<'a> {
    fn parse(url: &'a str, scheme: &'a str, query: &str) -> Result<UrlQuery<'a>, ConfigError> {
        let mut this = UrlQuery {
            url,
            scheme,
            params: Vec::new(),
        };
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let (Some(name), Some(value)) = (percent_decode(name), percent_decode(value)) else {
                return Err(this.error(format!("bad percent-encoding in `{param}`")));
            };
            if this.params.iter().any(|(n, _)| *n == name) {
                return Err(this.error(format!("query parameter `{name}` is given twice")));
            }
            this.params.push((name, value));
        }
        Ok(this)
    }

    /// The value of `name`, None if absent or empty.
    fn take(&mut self, name: &str) -> Option<String> {
        let at = self.params.iter().position(|(n, _)| n == name)?;
        Some(self.params.remove(at).1).filter(|v| !v.is_empty())
    }

    fn take_bool(&mut self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(value) => match parse_bool(&value) {
                Some(b) => Ok(Some(b)),
                None => Err(self.error(format!(
                    "query parameter `{name}` must be true or false, not {value:?}"
                ))),
            },
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
        let Some((name, _)) = self.params.first() else {
            return Ok(());
        };
        let known = match self.scheme {
            "s3" => "endpoint, region, force_path_style, skip_verify",
            "gs" => "none",
            _ => "account, endpoint",
        };
        Err(self.error(format!(
            "unknown query parameter `{name}` ({}:// accepts: {known})",
            self.scheme
        )))
    }

    fn error(&self, reason: String) -> ConfigError {
        ConfigError::StorageUrlParameter {
            url: self.url.to_owned(),
            reason,
        }
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it, which the registry uses for string values.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A root directory inside a bucket or container: the registry trims `/` on both sides.
fn trim_root(root: &str) -> &str {
    root.trim_matches('/')
}

/// One `REGISTRY_STORAGE*` variable: the key path below `storage`, lower-cased, and its parsed value.
struct Override {
    name: String,
    path: Vec<String>,
    value: Value,
}

/// The `REGISTRY_STORAGE*` variables of `env`, sorted by name as the registry applies them.
fn storage_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut vars: Vec<_> = env
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix("REGISTRY_")
                .and_then(|rest| rest.split('_').next())
                .is_some_and(|section| section.eq_ignore_ascii_case("storage"))
        })
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter()
        .map(|(name, value)| {
            let path: Vec<String> = name.split('_').skip(2).map(str::to_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Env {
                    name,
                    reason: "its name has an empty key between underscores",
                    source: None,
                });
            }
            match serde_yaml_ng::from_str(&value) {
                Ok(value) => Ok(Override { name, path, value }),
                Err(source) => Err(ConfigError::Env {
                    name,
                    reason: "its value is not valid YAML",
                    source: Some(source),
                }),
            }
        })
        .collect()
}

/// `storage: s3` means `storage: {s3: {}}`.
fn name_driver(storage: &mut Value) {
    if let Value::String(driver) = storage {
        let driver = Value::String(std::mem::take(driver));
        *storage = Value::Mapping(Mapping::from_iter([(driver, Mapping::new().into())]));
    }
}

/// Sets `node.<path>` to `value` as the registry's parser does (see the module doc).
fn set(node: &mut Value, path: &[String], value: Value) {
    let Some((key, rest)) = path.split_first() else {
        *node = value;
        return;
    };
    if node.is_null() {
        *node = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(map) = node else {
        return; // under a scalar or a list: the registry ignores the variable
    };
    if rest.is_empty() {
        map.insert(key.as_str().into(), value);
        return;
    }
    let existing = map
        .keys()
        .find(|k| k.as_str().is_some_and(|k| k.to_lowercase() == *key))
        .cloned();
    let child = map
        .entry(existing.unwrap_or_else(|| key.as_str().into()))
        .or_insert(Value::Null);
    set(child, rest, value);
}

fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let is_scheme = chars.next()?.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    is_scheme.then_some((scheme, rest))
}

fn percent_decode(s: &str) -> Option<String> {
    let mut bytes = s.bytes();
    let mut out = Vec::with_capacity(s.len());
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let mut hex = || char::from(bytes.next()?).to_digit(16);
            out.push((hex()? * 16 + hex()?) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The file (and overrides) a storage section came from, for errors.
struct Source<'a> {
    path: &'a Path,
    overrides: Vec<String>,
}

impl Source<'_> {
    fn storage_config(&self, storage: &Value) -> Result<StorageConfig, ConfigError> {
        let sections = match storage {
            Value::Null => return Err(self.no_driver()),
            Value::Mapping(sections) => sections,
            _ => return Err(self.ill_typed("storage", "a mapping, or the name of a driver")),
        };
        let mut drivers = Vec::new();
        for (key, params) in sections {
            let Some(key) = key.as_str() else {
                return Err(self.ill_typed("storage", "a mapping with string keys"));
            };
            if !NOT_DRIVERS.contains(&key) {
                drivers.push((key, params));
            }
        }
        let (driver, params) = match drivers[..] {
            // The registry, too, takes a driver named "" for no driver.
            [] | [("", _)] => return Err(self.no_driver()),
            [one] => one,
            _ => {
                return Err(ConfigError::SeveralDrivers {
                    path: self.path.to_owned(),
                    overrides: self.overrides.clone(),
                    drivers: drivers.iter().map(|(name, _)| name.to_string()).collect(),
                });
            }
        };
        // The registry registers its S3 driver as both `s3` and `s3aws`.
        if !SUPPORTED_DRIVERS.contains(&driver) && driver != "s3aws" {
            return Err(ConfigError::UnsupportedDriver {
                driver: driver.to_owned(),
            });
        }
        let params = match params {
            Value::Null => None,
            Value::Mapping(params) => Some(params),
            _ => {
                let key = format!("storage.{driver}");
                return Err(self.ill_typed(key, "a mapping of driver parameters"));
            }
        };
        let params = Params {
            source: self,
            prefix: format!("storage.{driver}"),
            map: params,
        };
        match driver {
            "s3" | "s3aws" => params.s3().map(StorageConfig::S3),
            "azure" => params.azure().map(StorageConfig::Azure),
            "gcs" => params.gcs().map(StorageConfig::Gcs),
            _ => params.filesystem(),
        }
    }

    fn no_driver(&self) -> ConfigError {
        ConfigError::NoDriver {
            path: self.path.to_owned(),
            overrides: self.overrides.clone(),
        }
    }

    fn ill_typed(&self, key: impl Into<String>, expected: &'static str) -> ConfigError {
        ConfigError::IllTyped {
            path: self.path.to_owned(),
            overrides: self.overrides.clone(),
            key: key.into(),
            expected,
        }
    }

    fn missing(&self, key: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_owned(),
            overrides: self.overrides.clone(),
            key: key.into(),
        }
    }
}

/// The parameters of a driver (or a map inside them), read the way the registry reads them: keys
/// exactly as written, scalars as strings where a string is expected, `~` as absent.
struct Params<'a> {
    source: &'a Source<'a>,
    /// The key path of this map, such as `storage.s3`.
    prefix: String,
    map: Option<&'a Mapping>,
}

impl<'a> Params<'a> {
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map?.get(key).filter(|v| !v.is_null())
    }

    /// A string, number or boolean as a string (the registry's `fmt.Sprint`); None if absent, `~` or empty.
    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let string = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(self.source.ill_typed(self.key(key), "a string")),
        };
        Ok(Some(string).filter(|s| !s.is_empty()))
    }

    fn required(&self, key: &str) -> Result<String, ConfigError> {
        self.string(key)?
            .ok_or_else(|| self.source.missing(self.key(key)))
    }

    fn secret(&self, key: &str) -> Result<Option<Secret>, ConfigError> {
        Ok(self.string(key)?.map(Secret))
    }

    /// A YAML boolean, or a string that Go's `strconv.ParseBool` accepts (`"true"`, `"false"`, …).
    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if parse_bool(s).is_some() => Ok(parse_bool(s)),
            Some(_) => Err(self
                .source
                .ill_typed(self.key(key), "a boolean (true or false)")),
        }
    }

    /// `rootdirectory` inside a bucket or container: trimmed of `/`; absent means the root.
    fn root_directory(&self) -> Result<String, ConfigError> {
        Ok(trim_root(&self.string("rootdirectory")?.unwrap_or_default()).to_owned())
    }

    /// A nested map, such as `storage.azure.credentials`; None if absent or `~`.
    fn map(&self, key: &str, expected: &'static str) -> Result<Option<Params<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Mapping(map)) => Ok(Some(Params {
                source: self.source,
                prefix: self.key(key),
                map: Some(map),
            })),
            Some(_) => Err(self.source.ill_typed(self.key(key), expected)),
        }
    }

    fn filesystem(&self) -> Result<StorageConfig, ConfigError> {
        let root_directory = match self.map.and_then(|p| p.get("rootdirectory")) {
            None => DEFAULT_ROOT_DIRECTORY,
            Some(Value::String(root)) if !root.is_empty() => root,
            Some(_) => {
                return Err(self.source.ill_typed(
                    "storage.filesystem.rootdirectory",
                    "a non-empty string: the directory that holds docker/registry/v2",
                ));
            }
        };
        Ok(StorageConfig::Filesystem {
            root_directory: root_directory.into(),
        })
    }

    fn s3(&self) -> Result<S3Config, ConfigError> {
        Ok(S3Config {
            bucket: self.required("bucket")?,
            region: self.string("region")?,
            region_endpoint: self.string("regionendpoint")?,
            force_path_style: self.bool("forcepathstyle")?,
            secure: self.bool("secure")?.unwrap_or(true),
            skip_verify: self.bool("skipverify")?.unwrap_or(false),
            root_directory: self.root_directory()?,
            access_key: self.string("accesskey")?,
            secret_key: self.secret("secretkey")?,
            session_token: self.secret("sessiontoken")?,
        })
    }

    fn azure(&self) -> Result<AzureConfig, ConfigError> {
        let account_name = self.required("accountname")?;
        let container = self.required("container")?;
        let account_key = self.secret("accountkey")?;
        let credentials = self.map("credentials", "a mapping with `type` and its parameters")?;
        let kind = match &credentials {
            Some(credentials) => credentials.string("type")?,
            None => None,
        };
        let credentials = match (kind.as_deref(), &account_key, credentials) {
            // The registry uses a non-empty account key whatever `credentials` says.
            (_, Some(_), _) => AzureCredentials::SharedKey,
            (Some("shared_key"), None, _) => {
                return Err(self.source.missing(self.key("accountkey")));
            }
            (Some("client_secret"), None, Some(credentials)) => AzureCredentials::ClientSecret {
                client_id: credentials.required("clientid")?,
                tenant_id: credentials.required("tenantid")?,
                secret: Secret(credentials.required("secret")?),
            },
            (None | Some("default_credentials"), None, _) => AzureCredentials::DefaultCredentials,
            (Some(_), None, _) => {
                return Err(self.source.ill_typed(
                    self.key("credentials.type"),
                    "one of client_secret, shared_key, default_credentials",
                ));
            }
        };
        Ok(AzureConfig {
            account_name,
            account_key,
            container,
            realm: self.string("realm")?,
            service_url: self.string("serviceurl")?,
            root_directory: self.root_directory()?,
            credentials,
        })
    }

    fn gcs(&self) -> Result<GcsConfig, ConfigError> {
        let keyfile = match self.get("keyfile") {
            None => None,
            Some(_) => Some(
                self.string("keyfile")?
                    .ok_or_else(|| {
                        self.source.ill_typed(
                            self.key("keyfile"),
                            "the path of a service-account key file",
                        )
                    })?
                    .into(),
            ),
        };
        let credentials_json = match self.get("credentials") {
            None => None,
            Some(credentials @ Value::Mapping(map)) if map.keys().all(Value::is_string) => {
                let json = serde_json::to_string(credentials).map_err(|_| {
                    self.source.ill_typed(
                        self.key("credentials"),
                        "service-account fields that JSON can hold",
                    )
                })?;
                Some(Secret(json))
            }
            Some(_) => {
                return Err(self.source.ill_typed(
                    self.key("credentials"),
                    "a mapping of service-account fields (type, project_id, private_key, …)",
                ));
            }
        };
        Ok(GcsConfig {
            bucket: self.required("bucket")?,
            keyfile,
            credentials_json,
            root_directory: self.root_directory()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/docker/registry/config.yml";

    /// /etc/docker/registry/config.yml of Debian's docker-registry 2.8.2.
    const DEBIAN: &str = "\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: basic-realm
    path: /etc/docker/registry
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
";

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn parse(text: &str, vars: &[(&str, &str)]) -> Result<StorageConfig, ConfigError> {
        parse_registry_config(text, Path::new(ORIGIN), env(vars))
    }

    fn fs(root: &str) -> StorageConfig {
        StorageConfig::Filesystem {
            root_directory: root.into(),
        }
    }

    fn s3(bucket: &str, root: &str) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            region: None,
            region_endpoint: None,
            force_path_style: None,
            secure: true,
            skip_verify: false,
            root_directory: root.into(),
            access_key: None,
            secret_key: None,
            session_token: None,
        }
    }

    #[test]
    fn debian_default_config() {
        assert_eq!(parse(DEBIAN, &[]).unwrap(), fs("/var/lib/docker-registry"));
    }

    #[test]
    fn driver_without_body_uses_default_root() {
        let text = "version: 0.1\nstorage:\n  filesystem:\n  delete:\n    enabled: true\n";
        let doc: Value = serde_yaml_ng::from_str(text).unwrap();
        assert!(doc["storage"]["filesystem"].is_null());
        assert_eq!(parse(text, &[]).unwrap(), fs("/var/lib/registry"));
        assert_eq!(
            parse("storage: filesystem\n", &[]).unwrap(),
            fs("/var/lib/registry")
        );
    }

    #[test]
    fn root_directory_key_is_exact_like_the_driver() {
        let text = "storage:\n  filesystem:\n    rootDirectory: /srv/registry\n";
        assert_eq!(parse(text, &[]).unwrap(), fs("/var/lib/registry"));
    }

    #[test]
    fn s3_sections_of_2_8_and_3_x() {
        let v2_8 = "\
storage:
  cache: {blobdescriptor: redis}
  delete: {enabled: true}
  maintenance:
    uploadpurging: {enabled: true, age: 168h}
    readonly: {enabled: false}
  redirect: {disable: true}
  tag: {concurrencylimit: 8}
  s3:
    region: us-east-1
    bucket: images
    rootdirectory: /registry/
    accesskey: AKIAEXAMPLE
    secretkey: wJalrXUtnFEMI
    regionendpoint: minio.local:9000
    secure: \"false\"
    skipverify: true
    v4auth: true
    chunksize: 5242880
";
        let StorageConfig::S3(config) = parse(v2_8, &[]).unwrap() else {
            panic!("not s3")
        };
        assert_eq!(
            config,
            S3Config {
                region: Some("us-east-1".into()),
                region_endpoint: Some("minio.local:9000".into()),
                secure: false,
                skip_verify: true,
                access_key: Some("AKIAEXAMPLE".into()),
                secret_key: Some(Secret::new("wJalrXUtnFEMI")),
                ..s3("images", "registry")
            }
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("wJalrXUtnFEMI") && debug.contains("***"),
            "{debug}"
        );

        let v3 =
            "storage:\n  s3:\n    bucket: b\n    forcepathstyle: false\n    sessiontoken: tok\n";
        let StorageConfig::S3(config) = parse(v3, &[]).unwrap() else {
            panic!("not s3")
        };
        assert_eq!(config.force_path_style, Some(false));
        assert_eq!(config.session_token, Some(Secret::new("tok")));
        assert_eq!(config.root_directory, "");
        // The registry's `s3aws` alias.
        assert!(matches!(
            parse("storage:\n  s3aws: {bucket: b}\n", &[]).unwrap(),
            StorageConfig::S3(_)
        ));
    }

    #[test]
    fn s3_from_environment_only() {
        let config = parse(
            DEBIAN,
            &[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_BUCKET", "from-env"),
                ("REGISTRY_STORAGE_S3_REGION", "eu-west-1"),
                ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true"),
            ],
        )
        .unwrap();
        assert_eq!(
            config,
            StorageConfig::S3(S3Config {
                region: Some("eu-west-1".into()),
                force_path_style: Some(true),
                ..s3("from-env", "")
            })
        );
    }

    #[test]
    fn azure_sections_and_credentials() {
        let shared = "\
storage:
  maintenance: {readonly: {enabled: true}}
  azure:
    accountname: acct
    accountkey: a2V5c2VjcmV0
    container: registry
    realm: core.chinacloudapi.cn
    rootdirectory: /reg
  redirect: {disable: true}
";
        let expected = AzureConfig {
            account_name: "acct".into(),
            account_key: Some(Secret::new("a2V5c2VjcmV0")),
            container: "registry".into(),
            realm: Some("core.chinacloudapi.cn".into()),
            service_url: None,
            root_directory: "reg".into(),
            credentials: AzureCredentials::SharedKey,
        };
        assert_eq!(
            parse(shared, &[]).unwrap(),
            StorageConfig::Azure(expected.clone())
        );
        let debug = format!("{:?}", parse(shared, &[]).unwrap());
        assert!(!debug.contains("a2V5c2VjcmV0"), "{debug}");

        // An account key from the environment, like a Kubernetes secret would give it.
        let no_key = shared.replace("    accountkey: a2V5c2VjcmV0\n", "");
        assert_eq!(
            parse(
                &no_key,
                &[("REGISTRY_STORAGE_AZURE_ACCOUNTKEY", "a2V5c2VjcmV0")]
            )
            .unwrap(),
            StorageConfig::Azure(expected.clone())
        );
        let StorageConfig::Azure(default) = parse(&no_key, &[]).unwrap() else {
            panic!("not azure")
        };
        assert_eq!(default.credentials, AzureCredentials::DefaultCredentials);

        let client_secret = "\
storage:
  azure:
    accountname: acct
    container: c
    serviceurl: https://acct.blob.core.windows.net
    credentials: {type: client_secret, clientid: cid, tenantid: tid, secret: s3cr3t}
";
        let StorageConfig::Azure(config) = parse(client_secret, &[]).unwrap() else {
            panic!("not azure")
        };
        assert_eq!(
            config.credentials,
            AzureCredentials::ClientSecret {
                client_id: "cid".into(),
                tenant_id: "tid".into(),
                secret: Secret::new("s3cr3t"),
            }
        );
        assert_eq!(
            config.service_url.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        assert!(!format!("{config:?}").contains("s3cr3t"));

        let shared_without_key = "storage:\n  azure:\n    accountname: a\n    container: c\n    \
                                  credentials: {type: shared_key}\n";
        let err = parse(shared_without_key, &[]).unwrap_err();
        assert!(
            err.to_string().contains("storage.azure.accountkey"),
            "{err}"
        );
        let unknown_type = "storage:\n  azure:\n    accountname: a\n    container: c\n    \
                            credentials: {type: magic}\n";
        let err = parse(unknown_type, &[]).unwrap_err();
        assert!(err.to_string().contains("credentials.type"), "{err}");
    }

    #[test]
    fn gcs_section() {
        let text = "storage:\n  gcs:\n    bucket: b\n    keyfile: /etc/key.json\n    rootdirectory: r\n    \
                    credentials: {type: service_account, private_key: PRIVATE}\n";
        let StorageConfig::Gcs(config) = parse(text, &[]).unwrap() else {
            panic!("not gcs")
        };
        assert_eq!(config.bucket, "b");
        assert_eq!(config.keyfile, Some(PathBuf::from("/etc/key.json")));
        assert_eq!(config.root_directory, "r");
        let json = config.credentials_json.as_ref().unwrap().expose();
        assert!(json.contains("\"private_key\":\"PRIVATE\""), "{json}");
        assert!(!format!("{config:?}").contains("PRIVATE"));
    }

    #[test]
    fn incomplete_or_ill_typed_object_store_sections_name_the_key() {
        for (text, key) in [
            ("storage:\n  s3:\n    region: r\n", "storage.s3.bucket"),
            ("storage:\n  s3:\n    bucket: \"\"\n", "storage.s3.bucket"),
            (
                "storage:\n  azure:\n    container: c\n",
                "storage.azure.accountname",
            ),
            (
                "storage:\n  azure:\n    accountname: a\n",
                "storage.azure.container",
            ),
            ("storage:\n  gcs: {}\n", "storage.gcs.bucket"),
            (
                "storage:\n  s3:\n    bucket: b\n    secure: maybe\n",
                "storage.s3.secure",
            ),
            ("storage:\n  s3:\n    bucket: [b]\n", "storage.s3.bucket"),
        ] {
            let err = parse(text, &[]).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(key) && message.contains(ORIGIN),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "hunter2");
        let text = "storage:\n  s3:\n    bucket: b\n    accesskey: AKID\n    secretkey: hunter2\n    \
                    sessiontoken: tok3n\n";
        let debug = format!("{:?}", parse(text, &[]).unwrap());
        assert!(
            !debug.contains("hunter2") && !debug.contains("tok3n") && debug.contains("AKID"),
            "{debug}"
        );
    }

    #[test]
    fn object_store_values_are_typed_like_the_registry() {
        // Scalars where a string is expected are taken as text; booleans may be strings.
        let text = "storage:\n  s3:\n    bucket: 123\n    region: true\n    secure: \"False\"\n    \
                    skipverify: \"1\"\n    forcepathstyle: \"true\"\n    rootdirectory: /\n    accesskey: \"\"\n";
        assert_eq!(
            parse(text, &[]).unwrap(),
            StorageConfig::S3(S3Config {
                region: Some("true".into()),
                secure: false,
                skip_verify: true,
                force_path_style: Some(true),
                ..s3("123", "")
            })
        );
        // Environment values are YAML: `false` is a boolean, a number is a string where one is expected.
        let vars = [
            ("REGISTRY_STORAGE_S3_SECURE", "false"),
            ("REGISTRY_STORAGE_S3_BUCKET", "42"),
            ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/a/b/"),
        ];
        let config = parse("storage:\n  s3:\n    bucket: b\n", &vars).unwrap();
        assert_eq!(
            config,
            StorageConfig::S3(S3Config {
                secure: false,
                ..s3("42", "a/b")
            })
        );
        let vars = [("REGISTRY_STORAGE_S3_SKIPVERIFY", "maybe")];
        let err = parse("storage:\n  s3:\n    bucket: b\n", &vars).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, ConfigError::IllTyped { key, .. } if key == "storage.s3.skipverify")
                && message.contains("REGISTRY_STORAGE_S3_SKIPVERIFY"),
            "{message}"
        );
        let err = parse("storage:\n  s3:\n    region: r\n", &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Missing { key, .. } if key == "storage.s3.bucket"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{ORIGIN}: `storage.s3.bucket` is required")
        );
        let text =
            "storage:\n  azure:\n    accountname: 123\n    container: c\n    accountkey: ~\n";
        let StorageConfig::Azure(config) = parse(text, &[]).unwrap() else {
            panic!("not azure")
        };
        assert_eq!(config.account_name, "123");
        assert_eq!(config.account_key, None);
        assert_eq!(config.credentials, AzureCredentials::DefaultCredentials);
    }

    #[test]
    fn azure_account_key_wins_like_the_registry() {
        let text = "storage:\n  azure:\n    accountname: a\n    container: c\n    accountkey: k3y\n    \
                    credentials: {type: client_secret, clientid: i, tenantid: t, secret: s}\n";
        let StorageConfig::Azure(config) = parse(text, &[]).unwrap() else {
            panic!("not azure")
        };
        assert_eq!(config.credentials, AzureCredentials::SharedKey);
        let text = "storage:\n  azure:\n    accountname: a\n    container: c\n    \
                    credentials: {type: default_credentials}\n";
        let StorageConfig::Azure(config) = parse(text, &[]).unwrap() else {
            panic!("not azure")
        };
        assert_eq!(config.credentials, AzureCredentials::DefaultCredentials);
        for (text, key) in [
            (
                "storage:\n  azure:\n    accountname: a\n    container: c\n    credentials: {type: client_secret, clientid: i, secret: s}\n",
                "storage.azure.credentials.tenantid",
            ),
            (
                "storage:\n  azure:\n    accountname: a\n    container: c\n    credentials: client_secret\n",
                "storage.azure.credentials",
            ),
            (
                "storage:\n  azure:\n    accountname: \"\"\n    container: c\n",
                "storage.azure.accountname",
            ),
        ] {
            let message = parse(text, &[]).unwrap_err().to_string();
            assert!(message.contains(&format!("`{key}`")), "{text}: {message}");
        }
    }

    #[test]
    fn gcs_credentials_become_json() {
        let text = "storage:\n  gcs:\n    bucket: b\n    credentials:\n      type: service_account\n      \
                    project_id: p\n      private_key: K\n";
        let StorageConfig::Gcs(config) = parse(text, &[]).unwrap() else {
            panic!("not gcs")
        };
        assert_eq!(
            config.credentials_json.map(|j| j.expose().to_owned()),
            Some(r#"{"type":"service_account","project_id":"p","private_key":"K"}"#.into())
        );
        assert_eq!(
            (config.keyfile, config.root_directory),
            (None, String::new())
        );
        for (text, key) in [
            (
                "storage:\n  gcs:\n    bucket: b\n    credentials: /key.json\n",
                "storage.gcs.credentials",
            ),
            (
                "storage:\n  gcs:\n    bucket: b\n    keyfile: \"\"\n",
                "storage.gcs.keyfile",
            ),
            (
                "storage:\n  gcs:\n    bucket: b\n    rootdirectory: {a: b}\n",
                "storage.gcs.rootdirectory",
            ),
        ] {
            let err = parse(text, &[]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::IllTyped { key: k, .. } if k == key),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn other_drivers_are_refused_by_name() {
        for driver in ["inmemory", "swift", "oss"] {
            let err = parse(&format!("storage:\n  {driver}: {{}}\n"), &[]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::UnsupportedDriver { driver: d } if d == driver),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .contains("supported: filesystem, s3, azure, gcs")
            );
        }
    }

    #[test]
    fn two_drivers_are_an_error_naming_both() {
        let text = "storage:\n  cache: {}\n  filesystem: {}\n  s3: {bucket: b}\n";
        let err = parse(text, &[]).unwrap_err();
        let ConfigError::SeveralDrivers { ref drivers, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(drivers, &["filesystem", "s3"]);
        let message = err.to_string();
        assert!(
            message.contains("filesystem, s3") && message.contains(ORIGIN),
            "{message}"
        );
    }

    #[test]
    fn missing_storage_is_an_error() {
        for text in [
            "version: 0.1\nhttp: {addr: ':5000'}\n",
            "",
            "storage:\n  delete: {enabled: true}\n",
        ] {
            let err = parse(text, &[]).unwrap_err();
            assert!(
                matches!(err, ConfigError::NoDriver { .. }),
                "{text:?}: {err:?}"
            );
            assert!(err.to_string().contains(ORIGIN), "{err}");
        }
    }

    #[test]
    fn yaml_syntax_error_names_the_file() {
        let err = parse("storage:\n  filesystem: [unclosed\n", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains(ORIGIN), "{err}");
    }

    #[test]
    fn merge_keys_are_applied() {
        let text = "\
defaults: &fs
  rootdirectory: /merged
storage:
  filesystem:
    <<: *fs
";
        assert_eq!(parse(text, &[]).unwrap(), fs("/merged"));
    }

    #[test]
    fn env_overrides_root_directory() {
        let vars = [("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/srv/data")];
        assert_eq!(parse(DEBIAN, &vars).unwrap(), fs("/srv/data"));
        // Also without any storage section in the file.
        assert_eq!(parse("version: 0.1\n", &vars).unwrap(), fs("/srv/data"));
    }

    #[test]
    fn env_bare_driver_name_replaces_storage() {
        let vars = [("REGISTRY_STORAGE", "s3")];
        // The file's filesystem section is gone: what is left is an s3 driver with no bucket.
        let message = parse(DEBIAN, &vars).unwrap_err().to_string();
        assert!(
            message.contains("storage.s3.bucket") && message.contains("REGISTRY_STORAGE"),
            "{message}"
        );
    }

    #[test]
    fn env_is_applied_sorted_by_name() {
        let s3 = "storage:\n  s3: {bucket: b}\n";
        // Given in the wrong order: applied as given, the bare name would wipe the root.
        let vars = [
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/data"),
            ("REGISTRY_STORAGE", "filesystem"),
        ];
        assert_eq!(parse(s3, &vars).unwrap(), fs("/data"));
    }

    #[test]
    fn other_variables_are_ignored() {
        let vars = [
            ("STORAGE_FILESYSTEM_ROOTDIRECTORY", "/x"),
            ("registry_storage", "s3"),
            ("XREGISTRY_STORAGE", "s3"),
            ("REGISTRYSTORAGE", "s3"),
            ("REGISTRY_STORAGEX", "s3"),
            ("REGISTRY_HTTP_SECRET", "[not yaml"),
        ];
        assert_eq!(
            parse(DEBIAN, &vars).unwrap(),
            fs("/var/lib/docker-registry")
        );
    }

    #[test]
    fn env_value_that_is_not_yaml_is_an_error() {
        let vars = [("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "[unclosed")];
        let err = parse(DEBIAN, &vars).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Env {
                    source: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(vars[0].0), "{err}");
        let vars = [("REGISTRY_STORAGE_", "s3")];
        let err = parse(DEBIAN, &vars).unwrap_err();
        assert!(
            matches!(err, ConfigError::Env { source: None, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn env_adding_a_second_driver_names_the_variable() {
        let vars = [("REGISTRY_STORAGE_S3_BUCKET", "b")];
        let err = parse(DEBIAN, &vars).unwrap_err();
        assert!(matches!(err, ConfigError::SeveralDrivers { .. }), "{err:?}");
        assert!(
            err.to_string().contains("REGISTRY_STORAGE_S3_BUCKET"),
            "{err}"
        );
    }

    #[test]
    fn env_under_a_scalar_is_ignored_like_the_registry() {
        let vars = [("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY_X", "1")];
        assert_eq!(
            parse(DEBIAN, &vars).unwrap(),
            fs("/var/lib/docker-registry")
        );
        // Where nothing is in the way, it creates the map, which is no root directory.
        let err = parse("storage: filesystem\n", &vars).unwrap_err();
        assert!(matches!(err, ConfigError::IllTyped { .. }), "{err:?}");
    }

    #[test]
    fn ill_typed_root_directory_names_the_key() {
        for value in ["{path: /x}", "5", "~", "''"] {
            let text = format!("storage:\n  filesystem:\n    rootdirectory: {value}\n");
            let err = parse(&text, &[]).unwrap_err();
            let ConfigError::IllTyped { ref key, .. } = err else {
                panic!("{value}: {err:?}")
            };
            assert_eq!(key, "storage.filesystem.rootdirectory");
            assert!(
                err.to_string().contains("storage.filesystem.rootdirectory"),
                "{err}"
            );
        }
        let err = parse("storage:\n  filesystem: /x\n", &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::IllTyped { key, .. } if key == "storage.filesystem"),
            "{err:?}"
        );
    }

    #[test]
    fn storage_urls() {
        let ok = |url| parse_storage_url(url).unwrap();
        assert_eq!(ok("file:///var/lib/registry"), fs("/var/lib/registry"));
        assert_eq!(ok("file:///srv/my%20registry"), fs("/srv/my registry"));
        assert_eq!(ok("/var/lib/registry"), fs("/var/lib/registry"));
        assert_eq!(ok("./relative"), fs("./relative"));
        assert_eq!(ok("./odd:name"), fs("./odd:name"));
        assert_eq!(
            ok("s3://bucket/root/"),
            StorageConfig::S3(s3("bucket", "root"))
        );
        assert_eq!(
            ok(
                "s3://b/r?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=us-east-1&force_path_style=true&skip_verify=true"
            ),
            StorageConfig::S3(S3Config {
                region_endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into()),
                force_path_style: Some(true),
                skip_verify: true,
                secure: false,
                ..s3("b", "r")
            })
        );
        let azure = |url| match ok(url) {
            StorageConfig::Azure(config) => config,
            other => panic!("{url}: {other:?}"),
        };
        let config = azure("az://container?account=acct");
        assert_eq!(
            (config.container.as_str(), config.root_directory.as_str()),
            ("container", "")
        );
        assert_eq!(config.credentials, AzureCredentials::DefaultCredentials);
        let config = azure("azure://c/pre/fix?account=a&endpoint=http://127.0.0.1:10000/a");
        assert_eq!(config.root_directory, "pre/fix");
        assert_eq!(
            config.service_url.as_deref(),
            Some("http://127.0.0.1:10000/a")
        );
        assert!(
            matches!(ok("gs://b/x"), StorageConfig::Gcs(GcsConfig { ref bucket, ref root_directory, .. }) if bucket == "b" && root_directory == "x")
        );
        assert_eq!(
            ok(
                "s3://bucket/some/root?endpoint=http://127.0.0.1:9000&region=us-east-1&force_path_style=true&skip_verify=false"
            ),
            StorageConfig::S3(S3Config {
                region_endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into()),
                force_path_style: Some(true),
                secure: false,
                ..s3("bucket", "some/root")
            })
        );
        assert_eq!(
            ok("S3://b?endpoint=https://minio.example&force_path_style=0"),
            StorageConfig::S3(S3Config {
                region_endpoint: Some("https://minio.example".into()),
                force_path_style: Some(false),
                ..s3("b", "")
            })
        );
        assert_eq!(
            ok("az://container/root?account=NAME&endpoint=http://127.0.0.1:10000/devstoreaccount1"),
            StorageConfig::Azure(AzureConfig {
                account_name: "NAME".into(),
                account_key: None,
                container: "container".into(),
                realm: None,
                service_url: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
                root_directory: "root".into(),
                credentials: AzureCredentials::DefaultCredentials,
            })
        );
        assert_eq!(
            ok("gs://bucket/my%20root/"),
            StorageConfig::Gcs(GcsConfig {
                bucket: "bucket".into(),
                keyfile: None,
                credentials_json: None,
                root_directory: "my root".into(),
            })
        );
        let message = parse_storage_url("az://c").unwrap_err().to_string();
        assert!(
            message.contains("az:// URL needs ?account=NAME"),
            "{message}"
        );
        for (url, needle) in [
            ("az://container", "account"),
            ("azure://container?account=", "account=NAME"),
            ("az://c?account=a&account=b", "account"),
            ("az://c?account=a&region=r", "region"),
            ("s3://b?endpoint=%zz", "%zz"),
            ("s3://b?colour=blue", "colour"),
            ("s3://b?force_path_style=yes", "force_path_style"),
            ("gs://b?region=x", "region"),
        ] {
            let err = parse_storage_url(url).unwrap_err();
            assert!(
                matches!(err, ConfigError::StorageUrlParameter { .. }),
                "{url}: {err:?}"
            );
            assert!(err.to_string().contains(needle), "{err}");
        }
        for url in [
            "ftp://x",
            "file://relative-host/x",
            "file://localhost/x",
            "file:/x",
            "file:///x%zz",
            "s3://",
            "s3:///root",
            "s3:bucket",
            "gs://b/x#frag",
            "az://?account=a",
            "",
        ] {
            let err = parse_storage_url(url).unwrap_err();
            assert!(
                matches!(err, ConfigError::StorageUrl { .. }),
                "{url}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains(url) && message.contains("file:///"),
                "{message}"
            );
        }
    }

    #[test]
    fn load_reads_the_file_and_names_it_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(&path, DEBIAN).unwrap();
        let vars = env(&[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/env")]);
        assert_eq!(load_registry_config(&path, vars).unwrap(), fs("/env"));

        let missing = dir.path().join("missing.yml");
        let err = load_registry_config(&missing, []).unwrap_err();
        let ConfigError::Read { ref source, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
    }
}
