//! The object stores sources are read from: the local disk, or S3.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use url::Url;

use crate::pipeline::StorageOptions;

/// The root of the object store holding `url`: `s3://bucket/`, or `file:///`.
pub fn store_root(url: &Url) -> Url {
    let root = format!("{}://{}/", url.scheme(), url.host_str().unwrap_or(""));
    Url::parse(&root).expect("a scheme and a host make a URL")
}

/// The object store for a source at `url`: the local disk, or S3 configured from the
/// standard `AWS_*` environment variables and then the source's `storage_options`.
/// Errors name options by key only: their values may be secrets.
pub fn object_store_for(
    url: &Url,
    options: &StorageOptions,
) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    match url.scheme() {
        "file" => Ok(Arc::new(LocalFileSystem::new())),
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in options.iter() {
                let parsed: AmazonS3ConfigKey = key
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| format!("storage_options.{key} is not an S3 option"))?;
                builder = builder.with_config(parsed, value);
            }
            let store = builder
                .build()
                .map_err(|e| format!("cannot configure S3 for {url}: {e}"))?;
            Ok(Arc::new(store))
        }
        other => Err(format!(
            "`{other}://` sources are not supported; use a local path, file:// or s3://"
        )),
    }
}
