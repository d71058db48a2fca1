//! How a [`WriteSlice`] travels: Ballista's codecs, which also carry the write node
//! from the driver to the scheduler and its operator from the scheduler to executors.
//!
//! The driver, the scheduler and the executors of `backfill cluster` all use these; a
//! stock Ballista cluster cannot run a slice's write. A write is encoded as a marker and
//! its [`WriteSpec`] as JSON. The marker starts with a zero byte, which no protobuf
//! message (Ballista's own encoding) starts with, so the two never mix.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    AggregateUDF, Extension, HigherOrderUDF, LogicalPlan, ScalarUDF, WindowUDF,
};
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use super::write::{WriteSlice, WriteSliceExec, WriteSpec};

const MARKER: &[u8] = b"\0backfill.write-slice\n";

fn encode(spec: &WriteSpec, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(MARKER);
    serde_json::to_writer(buf, spec).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// The write encoded in `buf`, if it holds one.
fn decode(buf: &[u8]) -> Result<Option<WriteSpec>> {
    let Some(json) = buf.strip_prefix(MARKER) else {
        return Ok(None);
    };
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| DataFusionError::External(Box::new(e)))
}

/// The single input of a write, as the plan carries it.
fn only<T: Clone>(inputs: &[T]) -> Result<T> {
    match inputs {
        [input] => Ok(input.clone()),
        _ => Err(DataFusionError::Internal(format!(
            "a slice's write has one input, not {}",
            inputs.len()
        ))),
    }
}

/// The methods both codecs hand to Ballista's as they are: functions travel by name.
macro_rules! functions_of_ballista {
    () => {
        fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
            self.ballista.try_decode_udf(name, buf)
        }

        fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
            self.ballista.try_encode_udf(node, buf)
        }

        fn try_decode_higher_order_function(
            &self,
            name: &str,
            buf: &[u8],
        ) -> Result<Arc<HigherOrderUDF>> {
            self.ballista.try_decode_higher_order_function(name, buf)
        }

        fn try_encode_higher_order_function(
            &self,
            node: &HigherOrderUDF,
            buf: &mut Vec<u8>,
        ) -> Result<()> {
            self.ballista.try_encode_higher_order_function(node, buf)
        }

        fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
            self.ballista.try_decode_udaf(name, buf)
        }

        fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
            self.ballista.try_encode_udaf(node, buf)
        }

        fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
            self.ballista.try_decode_udwf(name, buf)
        }

        fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
            self.ballista.try_encode_udwf(node, buf)
        }
    };
}

/// Ballista's logical codec, and [`WriteSlice`].
#[derive(Debug, Default)]
pub(crate) struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        match decode(buf)? {
            Some(spec) => Ok(Extension {
                node: Arc::new(WriteSlice {
                    input: only(inputs)?,
                    spec,
                }),
            }),
            None => self.ballista.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        match node.node.as_any().downcast_ref::<WriteSlice>() {
            Some(write) => encode(&write.spec, buf),
            None => self.ballista.try_encode(node, buf),
        }
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        self.ballista
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.ballista
            .try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }

    functions_of_ballista!();
}

/// Ballista's physical codec, and [`WriteSliceExec`].
#[derive(Debug, Default)]
pub(crate) struct PhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match decode(buf)? {
            Some(spec) => Ok(Arc::new(WriteSliceExec::new(only(inputs)?, spec))),
            None => self.ballista.try_decode(buf, inputs, ctx, converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        match node.downcast_ref::<WriteSliceExec>() {
            Some(write) => encode(&write.spec, buf),
            None => self.ballista.try_encode(node, buf, converter),
        }
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        self.ballista.try_decode_expr(buf, inputs, ctx)
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> Result<()> {
        self.ballista.try_encode_expr(node, buf, ctx)
    }

    functions_of_ballista!();
}
