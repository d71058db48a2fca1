//! StagedOutput output as a DataFusion table: what assertions check, what merge reads as its
//! source, and what a rebuild's preview queries. Reading only; nothing here writes.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use deltalake::kernel::Add;

use super::StagedOutput;
use crate::source::{decoded_path, files_table, DataFile};

impl StagedOutput {
    /// The staged output of a slice as a table: its files, with the partition columns
    /// that were written as folders added back as typed constants, in the output's
    /// column order.
    pub fn table(&self, schema: &SchemaRef) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        files_table(
            schema,
            &self.base,
            &self.partition_columns,
            data_files(&self.adds),
        )
    }
}

/// Files a slice's commit adds, as [`files_table`] reads them.
pub(crate) fn data_files(adds: &[Add]) -> impl Iterator<Item = DataFile> + '_ {
    adds.iter().map(|add| DataFile {
        path: decoded_path(&add.path),
        partition: add.partition_values.clone(),
    })
}
