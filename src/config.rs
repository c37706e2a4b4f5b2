//! Where the registry keeps its data: read from the registry's own `config.yml`, or from `--storage`.
//!
//! Operators hand regsweep the very file their registry runs with, usually next to the `REGISTRY_*`
//! variables of its container. If we read that file differently from the registry, we collect a
//! different directory from the one the registry serves. So this module follows distribution's
//! `configuration/parser.go` and the filesystem driver rather than reading the YAML "naturally":
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
                         s3://bucket[/prefix], az://container[/prefix] (or azure://), gs://bucket[/prefix]";

/// Where the registry keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// `storage.filesystem.rootdirectory` (default `/var/lib/registry`), or `file:///path`.
    Filesystem { root_directory: PathBuf },
    /// A driver this build does not support yet (`s3`, `azure`, `gcs`, `inmemory`, `swift`, `oss`, …): keep its name.
    Unsupported { driver: String },
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
    #[error("environment variable {name}: {reason}")]
    Env {
        name: String,
        reason: &'static str,
        #[source]
        source: Option<serde_yaml_ng::Error>,
    },
    #[error("--storage {url:?} is not one of: {URL_FORMS}")]
    StorageUrl { url: String },
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

/// Parses `--storage`: `file:///abs/path` or a plain absolute/relative filesystem path → Filesystem; `s3://…`, `az://…`/`azure://…`, `gs://…` → Unsupported with driver `s3`/`azure`/`gcs`; anything else → error.
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
    let driver = match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            // RFC 8089 with an empty host: the path follows `file://` directly.
            if !rest.starts_with('/') || rest.contains(['?', '#']) {
                return Err(bad());
            }
            return Ok(StorageConfig::Filesystem {
                root_directory: percent_decode(rest).ok_or_else(bad)?.into(),
            });
        }
        "s3" => "s3",
        "az" | "azure" => "azure",
        "gs" => "gcs",
        _ => return Err(bad()),
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad()); // no bucket or container
    }
    Ok(StorageConfig::Unsupported {
        driver: driver.to_owned(),
    })
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
        let params = match params {
            Value::Null => None,
            Value::Mapping(params) => Some(params),
            _ => {
                let key = format!("storage.{driver}");
                return Err(self.ill_typed(key, "a mapping of driver parameters"));
            }
        };
        if driver != "filesystem" {
            return Ok(StorageConfig::Unsupported {
                driver: driver.to_owned(),
            });
        }
        let root_directory = match params.and_then(|p| p.get("rootdirectory")) {
            None => DEFAULT_ROOT_DIRECTORY,
            Some(Value::String(root)) if !root.is_empty() => root,
            Some(_) => {
                return Err(self.ill_typed(
                    "storage.filesystem.rootdirectory",
                    "a non-empty string: the directory that holds docker/registry/v2",
                ));
            }
        };
        Ok(StorageConfig::Filesystem {
            root_directory: root_directory.into(),
        })
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

    fn unsupported(driver: &str) -> StorageConfig {
        StorageConfig::Unsupported {
            driver: driver.to_owned(),
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
    fn cloud_drivers_are_unsupported_by_name() {
        let s3 = "\
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
    rootdirectory: /registry
";
        assert_eq!(parse(s3, &[]).unwrap(), unsupported("s3"));
        let azure = "\
storage:
  maintenance: {readonly: {enabled: true}}
  azure:
    accountname: acct
    accountkey: a2V5
    container: registry
  redirect: {disable: true}
";
        assert_eq!(parse(azure, &[]).unwrap(), unsupported("azure"));
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
        assert_eq!(parse(DEBIAN, &vars).unwrap(), unsupported("s3"));
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
        assert_eq!(ok("s3://bucket/root"), unsupported("s3"));
        assert_eq!(ok("az://container"), unsupported("azure"));
        assert_eq!(ok("azure://container/prefix"), unsupported("azure"));
        assert_eq!(ok("gs://b"), unsupported("gcs"));
        for url in [
            "ftp://x",
            "file://relative-host/x",
            "file://localhost/x",
            "file:/x",
            "file:///x%zz",
            "s3://",
            "s3:bucket",
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
