//! What a log request asks for, spelled as the kubelet's read-only API
//! spells it: `GET /containerLogs/{namespace}/{pod}/{container}` with the
//! query parameters `follow`, `previous`, `tailLines` and `timestamps`.
//! Both the server's parsing and the client's building live here, so the
//! two cannot drift apart.

/// The path every container log request starts with.
pub const CONTAINER_LOGS_PREFIX: &str = "/containerLogs/";

/// Parameters the kubelet knows that commitd's agent does not honour yet:
/// refused out loud rather than silently ignored.
const UNSUPPORTED: [&str; 3] = ["sinceSeconds", "sinceTime", "limitBytes"];

/// The container whose log is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name, app or init container.
    pub container: String,
}

impl ContainerRef {
    /// The request path for this container. Names are used as they are:
    /// namespaces, pods and containers are DNS names, which need no
    /// escaping in a path.
    pub fn path(&self) -> String {
        format!(
            "{CONTAINER_LOGS_PREFIX}{}/{}/{}",
            self.namespace, self.pod, self.container
        )
    }

    /// The container a request path names; `None` for any other path.
    pub fn from_path(path: &str) -> Option<ContainerRef> {
        let rest = path.strip_prefix(CONTAINER_LOGS_PREFIX)?;
        let mut parts = rest.split('/');
        let (namespace, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [namespace, pod, container].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(ContainerRef {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        })
    }
}

/// How much of the log to send, and whether to keep sending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming what the running instance prints until it stops.
    pub follow: bool,
    /// The instance before the last restart instead of the current one.
    pub previous: bool,
    /// Only the last N lines; `None`: all of them.
    pub tail_lines: Option<u64>,
    /// Put the time each line was written (RFC3339Nano) in front of it.
    pub timestamps: bool,
}

impl LogOptions {
    /// Reads a request's query string. Booleans read as the API server
    /// reads them (`0`, `f` and `false` in any case are false, any other
    /// value, or none, true); the first of repeated parameters counts;
    /// parameters the kubelet does not know are ignored, as it does. The
    /// error is the message for a 400 answer.
    pub fn from_query(query: &str) -> Result<LogOptions, String> {
        let mut options = LogOptions::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if seen.iter().any(|k| *k == key) {
                continue;
            }
            seen.push(key.to_string());
            match key.as_ref() {
                "follow" => options.follow = truthy(&value),
                "previous" => options.previous = truthy(&value),
                "timestamps" => options.timestamps = truthy(&value),
                "tailLines" => {
                    let n: i64 = value.trim().parse().map_err(|_| {
                        format!("tailLines: Invalid value: \"{value}\": must be an integer")
                    })?;
                    let n = u64::try_from(n).map_err(|_| {
                        format!("tailLines: Invalid value: {n}: must be greater than or equal to 0")
                    })?;
                    options.tail_lines = Some(n);
                }
                other if UNSUPPORTED.contains(&other) => {
                    return Err(format!(
                        "{other}: Unsupported value: commitd's node agent does not support {other} yet"
                    ));
                }
                _ => {}
            }
        }
        Ok(options)
    }

    /// The query string for these options (empty when all are defaults).
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, on) in [
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ] {
            if on {
                query.append_pair(key, "true");
            }
        }
        if let Some(n) = self.tail_lines {
            query.append_pair("tailLines", &n.to_string());
        }
        query.finish()
    }
}

fn truthy(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("f") || value.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_one_container() {
        let c = ContainerRef::from_path("/containerLogs/demo/web-1/app").expect("path");
        assert_eq!(
            (c.namespace.as_str(), c.pod.as_str(), c.container.as_str()),
            ("demo", "web-1", "app")
        );
        assert_eq!(c.path(), "/containerLogs/demo/web-1/app");
        for bad in [
            "/containerLogs/demo/web-1",
            "/containerLogs/demo/web-1/app/x",
            "/containerLogs/demo//app",
            "/containerLogs/demo/web-1/",
            "/containerlogs/demo/web-1/app",
            "/logs/demo/web-1/app",
            "/",
        ] {
            assert_eq!(ContainerRef::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn kubelet_parameters_are_read() {
        assert_eq!(LogOptions::from_query(""), Ok(LogOptions::default()));
        assert_eq!(
            LogOptions::from_query("follow=true&previous=1&tailLines=10&timestamps=True"),
            Ok(LogOptions {
                follow: true,
                previous: true,
                tail_lines: Some(10),
                timestamps: true,
            })
        );
        // Booleans as the API server reads them; the first of repeats wins.
        let o = LogOptions::from_query("follow&previous=false&timestamps=F&follow=0").expect("q");
        assert!(o.follow && !o.previous && !o.timestamps);
        assert!(!LogOptions::from_query("follow=0").expect("q").follow);
        assert!(LogOptions::from_query("follow=yes").expect("q").follow);
        // Unknown parameters are ignored, as the kubelet ignores them.
        assert_eq!(
            LogOptions::from_query("pretty=true&container=x"),
            Ok(LogOptions::default())
        );
        assert_eq!(
            LogOptions::from_query("tailLines=0").map(|o| o.tail_lines),
            Ok(Some(0))
        );
    }

    #[test]
    fn bad_parameters_say_why() {
        assert_eq!(
            LogOptions::from_query("tailLines=-1"),
            Err("tailLines: Invalid value: -1: must be greater than or equal to 0".into())
        );
        assert_eq!(
            LogOptions::from_query("tailLines=ten"),
            Err("tailLines: Invalid value: \"ten\": must be an integer".into())
        );
        let err = LogOptions::from_query("sinceSeconds=10").expect_err("unsupported");
        assert!(err.starts_with("sinceSeconds: Unsupported value"), "{err}");
    }

    #[test]
    fn queries_round_trip() {
        for options in [
            LogOptions::default(),
            LogOptions {
                follow: true,
                previous: false,
                tail_lines: Some(0),
                timestamps: true,
            },
            LogOptions {
                follow: false,
                previous: true,
                tail_lines: Some(25),
                timestamps: false,
            },
        ] {
            assert_eq!(LogOptions::from_query(&options.to_query()), Ok(options));
        }
        assert_eq!(LogOptions::default().to_query(), "");
    }
}
