//! A repository in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW...),
//! through the `object_store` crate.
//!
//! `s3://bucket/prefix` names the bucket and the key prefix; the endpoint, region and
//! credentials come from [`S3Options`] or the standard `AWS_*` environment variables
//! (`AWS_ENDPOINT_URL`/`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). Conditional creates send
//! `If-None-Match: *`. A PUT is atomic and durable when it returns, so [`Backend::sync`]
//! has nothing to do. Transient server errors are retried with backoff for a bounded
//! time, then reported.

use super::{check_name, err, Backend, ObjectMeta, PutMode};
use crate::error::{BackendKind, Error, Result};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use std::time::Duration;

/// Where and as whom to reach an S3 endpoint; unset fields come from the environment.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// `http(s)://host:port` of the service (AWS's regional endpoint when unset).
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when unset everywhere).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
}

/// A bucket prefix holding a repository.
pub struct S3 {
    store: AmazonS3,
    prefix: String,
    spec: String,
    runtime: tokio::runtime::Runtime,
}

impl S3 {
    /// Open `bucket[/prefix]` (the part of an `s3://` URL after the scheme).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a missing bucket or a bad configuration.
    pub fn open(rest: &str, opts: &S3Options) -> Result<S3> {
        let spec = format!("s3://{rest}");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidArgument(format!("{spec}: no bucket named")));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            check_name(&prefix)?;
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_connect_timeout(Duration::from_secs(10)),
            );
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(ep) = &endpoint {
            b = b.with_endpoint(ep.as_str());
            if ep.starts_with("http://") {
                b = b.with_allow_http(true);
            }
        }
        if let Some(r) = opts
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
        {
            b = b.with_region(r);
        }
        if let Some(k) = &opts.access_key_id {
            b = b.with_access_key_id(k.as_str());
        }
        if let Some(s) = &opts.secret_access_key {
            b = b.with_secret_access_key(s.as_str());
        }
        let store = b
            .build()
            .map_err(|e| Error::InvalidArgument(format!("{spec}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vcb-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", "start", e))?;
        Ok(S3 {
            store,
            prefix,
            spec,
            runtime,
        })
    }

    fn key(&self, name: &str) -> Result<ObjectPath> {
        check_name(name)?;
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        })
    }

    /// The repository name of a key listed under the prefix.
    fn name_of(&self, key: &ObjectPath) -> Option<String> {
        let key = key.as_ref();
        if self.prefix.is_empty() {
            return Some(key.to_owned());
        }
        key.strip_prefix(&self.prefix)?
            .strip_prefix('/')
            .map(str::to_owned)
    }

    fn fail(&self, op: &'static str, name: &str, e: &object_store::Error) -> Error {
        let kind = match e {
            object_store::Error::NotFound { .. } => BackendKind::NotFound,
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => BackendKind::AlreadyExists,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => BackendKind::PermissionDenied,
            _ => BackendKind::Other,
        };
        let full = e.to_string().replace('\n', " ");
        // The S3 error code says what went wrong; object_store's text around it repeats
        // the request and the server's XML.
        let code = full
            .split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(c, _)| c.to_owned());
        let (kind, detail) = match code.as_deref() {
            Some("NoSuchBucket") => (BackendKind::Other, "the bucket does not exist".to_owned()),
            Some(c @ ("SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied")) => (
                BackendKind::PermissionDenied,
                format!("access denied ({c}: check the endpoint and the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY credentials)"),
            ),
            Some(c) => (kind, format!("{c}: {}", short(&full))),
            None => (kind, short(&full)),
        };
        err(&self.spec, op, name, kind, detail)
    }

    fn meta(&self, m: object_store::ObjectMeta) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: self.name_of(&m.location)?,
            size: m.size,
            modified: m.last_modified.into(),
        })
    }
}

/// object_store's message without the server's XML body.
fn short(full: &str) -> String {
    let cut = full.find("<?xml").unwrap_or(full.len());
    full[..cut].trim_end_matches([':', ' ']).to_owned()
}

impl Backend for S3 {
    fn location(&self) -> String {
        self.spec.clone()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let key = self.key(name)?;
        self.runtime.block_on(async {
            let r = self
                .store
                .get(&key)
                .await
                .map_err(|e| self.fail("get", name, &e))?;
            let bytes = r.bytes().await.map_err(|e| self.fail("get", name, &e))?;
            Ok(bytes.to_vec())
        })
    }

    fn put(&self, name: &str, data: &[u8], mode: PutMode) -> Result<()> {
        let key = self.key(name)?;
        let payload = PutPayload::from(data.to_vec());
        let put_mode = match mode {
            PutMode::Create => object_store::PutMode::Create,
            PutMode::Overwrite | PutMode::Data => object_store::PutMode::Overwrite,
        };
        let opts = object_store::PutOptions {
            mode: put_mode,
            ..Default::default()
        };
        self.runtime
            .block_on(self.store.put_opts(&key, payload, opts))
            .map(drop)
            .map_err(|e| self.fail("put", name, &e))
    }

    fn delete(&self, name: &str) -> Result<bool> {
        let key = self.key(name)?;
        // S3 deletes are idempotent and do not say whether the object existed.
        match self.runtime.block_on(self.store.delete(&key)) {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.fail("delete", name, &e)),
        }
    }

    fn stat(&self, name: &str) -> Result<Option<ObjectMeta>> {
        let key = self.key(name)?;
        match self.runtime.block_on(self.store.head(&key)) {
            Ok(m) => Ok(self.meta(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("stat", name, &e)),
        }
    }

    fn list(&self, prefix: &str, each: &mut dyn FnMut(ObjectMeta) -> Result<()>) -> Result<()> {
        // object_store lists whole path segments: list the folder, filter by the rest.
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let dir_key = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(ObjectPath::from(dir)),
            (false, true) => Some(ObjectPath::from(self.prefix.as_str())),
            (false, false) => Some(ObjectPath::from(format!("{}/{dir}", self.prefix))),
        };
        self.runtime.block_on(async {
            let mut stream = self.store.list(dir_key.as_ref());
            while let Some(item) = stream.next().await {
                let m = item.map_err(|e| self.fail("list", prefix, &e))?;
                if let Some(meta) = self.meta(m) {
                    if meta.name.starts_with(prefix) {
                        each(meta)?;
                    }
                }
            }
            Ok(())
        })
    }

    fn is_empty(&self) -> Result<bool> {
        let mut any = false;
        let r = self.list("", &mut |_| {
            any = true;
            Err(Error::Cancelled)
        });
        match r {
            Ok(()) | Err(Error::Cancelled) => Ok(!any),
            Err(e) => Err(e),
        }
    }

    fn create(&self) -> Result<()> {
        // Buckets are made by their administrator; keys need no folders.
        Ok(())
    }
}
