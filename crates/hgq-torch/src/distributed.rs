//! Data-parallel training over PyTorch's c10d: the same engine as torch's
//! `DistributedDataParallel`, from libtorch (a `TCPStore` rendezvous, `ProcessGroupGloo` for
//! CPU tensors and `ProcessGroupNCCL` for CUDA tensors, as torch.distributed's default
//! `cpu:gloo,cuda:nccl`; a timeout on every collective, so that a rank that dies is an error on
//! the others, not a hang).
//!
//! A [`ProcessGroup`] joins from torchrun's environment ([`ProcessGroup::from_env`]:
//! `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`) or from explicit [`GroupOptions`].
//! Then, per process: build the model the same way, [`ProcessGroup::broadcast_variables`] from
//! rank 0, and train each step on this rank's rows of the global batch
//! ([`ProcessGroup::shard`]) with [`ProcessGroup::train_step`]: the gradients are averaged over
//! the ranks (weighted by their rows, in one flat all-reduce) before the optimizer step, and
//! the quantizers' tracked state (WRAP integer bits, and the sign bits while tracing) is
//! reduced with MAX ([`hgq_core::sync`]: the autograd step in the forward, where it is formed;
//! the native step every layer's at once, in the gradients' collective,
//! [`hgq_core::sync::defer`]), so every rank holds the same model as one process training on the
//! whole batches would.
//!
//! ```no_run
//! use hgq_torch::distributed::ProcessGroup;
//! use hgq_torch::layers::{Activation, QDense, Sequential};
//! use hgq_torch::optim::{Adam, AdamConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let group = ProcessGroup::from_env()?; // as torchrun sets it
//! let vs = nn::VarStore::new(Device::Cpu);
//! let mut model = Sequential::new();
//! model.add(&vs.root(), QDense::builder(64, 32).activation(Activation::Relu))?;
//! model.add(&vs.root(), QDense::builder(32, 10))?;
//! group.broadcast_variables(&vs)?;
//! let mut opt = Adam::new(&vs, AdamConfig::default())?;
//! let (x, labels) = (Tensor::rand([256, 64], (Kind::Float, Device::Cpu)), Tensor::zeros([256], (Kind::Int64, Device::Cpu)));
//! let rows = group.shard(256);
//! let (xl, ll) = (x.narrow(0, rows.start as i64, rows.len() as i64), labels.narrow(0, rows.start as i64, rows.len() as i64));
//! group.train_step(&model, &vs, &xl, &ll, &mut opt)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Several ranks on one machine should share its CPUs, as torchrun's `OMP_NUM_THREADS=1`
//! does for torch: the native step runs on rayon's threads (a team that spins for the step),
//! so give each rank its share (`RAYON_NUM_THREADS`, which `cargo xtask demo --nproc` sets),
//! or the ranks' spinning threads starve the collectives'.
//!
//! Batch normalization uses each rank's own batch statistics (hgq2's `synchronized=False`);
//! stochastic rounding draws the same stream on every rank (the seed state is broadcast with
//! the variables).
//!
//! Models on a CUDA device: with [`Backend::Auto`] (the default) a group whose machine has a
//! CUDA device and whose build has NCCL ([`nccl_available`]) reduces CUDA tensors with NCCL on
//! the device; otherwise (or with [`Backend::Gloo`]) the gradients go through host memory and
//! Gloo. Each rank uses its own GPU (NCCL refuses two ranks on one device): torchrun's
//! `LOCAL_RANK` says which. NCCL is built where `cargo xtask setup` installed the CUDA
//! headers that c10d's NCCL header needs (two small header wheels beside torch's CUDA
//! libraries). NCCL collectives are ordered on the tensors' stream, not waited for on the
//! host; one past the timeout makes NCCL's watchdog abort the communicators
//! (`TORCH_NCCL_ASYNC_ERROR_HANDLING=2` unless the environment sets it), so the next
//! collective is an error, not the end of the process.
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hgq_core::CallMode;
use hgq_core::sync::{StateSync, SyncGuard};
use tch::{Kind, Tensor, nn};
use torch_sys::C_tensor;

use crate::layers::{Sequential, StepOutput, native};
use crate::optim::Adam;
use crate::{Result, TorchError};

unsafe extern "C" {
    fn hgq_dist_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        nccl: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn hgq_dist_free(g: *mut c_void);
    fn hgq_dist_all_reduce(
        g: *mut c_void,
        t: *const C_tensor,
        op: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn hgq_dist_broadcast(
        g: *mut c_void,
        t: *const C_tensor,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn hgq_dist_barrier(g: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn hgq_dist_has_nccl() -> c_int;
}

/// Whether this build of hgq-torch has c10d's NCCL backend (it needs a CUDA libtorch and the
/// CUDA headers that `cargo xtask setup` installs beside it). A machine also needs a CUDA
/// device to use it.
pub fn nccl_available() -> bool {
    // SAFETY: a constant of the C++ build.
    unsafe { hgq_dist_has_nccl() != 0 }
}

/// The c10d backends of a group. CPU tensors always go through Gloo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// NCCL for CUDA tensors where this build has it ([`nccl_available`]) and the machine has
    /// a CUDA device, as torch.distributed's default; Gloo alone otherwise.
    #[default]
    Auto,
    /// Gloo alone: CUDA tensors go through host memory.
    Gloo,
    /// NCCL for CUDA tensors; joining fails where NCCL or a CUDA device is missing.
    Nccl,
}

impl Backend {
    /// Whether a group of this choice makes an NCCL backend here.
    fn nccl(self) -> Result<bool> {
        let here = nccl_available() && tch::Cuda::is_available();
        match self {
            Backend::Auto => Ok(here),
            Backend::Gloo => Ok(false),
            Backend::Nccl if here => Ok(true),
            Backend::Nccl => Err(TorchError::Invalid {
                what: "process group",
                why: if nccl_available() {
                    "NCCL asked for, and this machine has no CUDA device".into()
                } else {
                    "NCCL asked for, and this build of hgq-torch has none (a CUDA libtorch and \
                     the CUDA headers of `cargo xtask setup` are needed at build time)"
                        .into()
                },
            }),
        }
    }
}

/// A reduction of an all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum over the ranks.
    Sum,
    /// The maximum.
    Max,
    /// The minimum.
    Min,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// Where and how to join a group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    /// The address of rank 0, which serves the rendezvous (`MASTER_ADDR`).
    pub master_addr: String,
    /// Its port (`MASTER_PORT`).
    pub master_port: u16,
    /// This process' rank, `0..world_size` (`RANK`).
    pub rank: usize,
    /// The number of processes (`WORLD_SIZE`).
    pub world_size: usize,
    /// The longest a rendezvous or a collective may take before it is an error.
    pub timeout: Duration,
    /// The prefix of the group's keys in the store; each backend's keys go under it and then
    /// `cpu/` or `cuda/`, as torch.distributed does (its default group uses `default_pg/0/`;
    /// empty: none).
    pub prefix: String,
    /// The backends to make.
    pub backend: Backend,
}

impl GroupOptions {
    /// Rank `rank` of `world_size` at `master_addr:master_port`, a 5-minute timeout, no
    /// prefix, [`Backend::Auto`].
    pub fn new(
        master_addr: impl Into<String>,
        master_port: u16,
        rank: usize,
        world_size: usize,
    ) -> Self {
        GroupOptions {
            master_addr: master_addr.into(),
            master_port,
            rank,
            world_size,
            timeout: Duration::from_secs(300),
            prefix: String::new(),
            backend: Backend::Auto,
        }
    }

    /// Sets the backends.
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }

    /// Sets the timeout of the rendezvous and of every collective.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets the store prefix.
    pub fn prefix(mut self, p: impl Into<String>) -> Self {
        self.prefix = p.into();
        self
    }

    /// torchrun's variables: `MASTER_ADDR` (default `127.0.0.1`), `MASTER_PORT`, `RANK`,
    /// `WORLD_SIZE`; `HGQ_DIST_TIMEOUT_S` for the timeout (default 300 s).
    pub fn from_env() -> Result<Self> {
        let var = |k: &'static str| std::env::var(k).ok();
        let num = |k: &'static str| -> Result<usize> {
            let v = var(k).ok_or_else(|| TorchError::Invalid {
                what: "distributed environment",
                why: format!("{k} is not set"),
            })?;
            v.parse().map_err(|_| TorchError::Invalid {
                what: "distributed environment",
                why: format!("{k}={v:?} is not a number"),
            })
        };
        let port = num("MASTER_PORT")?;
        let timeout = match var("HGQ_DIST_TIMEOUT_S") {
            Some(s) => Duration::from_secs_f64(s.parse().map_err(|_| TorchError::Invalid {
                what: "distributed environment",
                why: format!("HGQ_DIST_TIMEOUT_S={s:?} is not a number"),
            })?),
            None => Duration::from_secs(300),
        };
        let port = u16::try_from(port).map_err(|_| TorchError::Invalid {
            what: "distributed environment",
            why: format!("MASTER_PORT={port} is not a port"),
        })?;
        Ok(GroupOptions::new(
            var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            port,
            num("RANK")?,
            num("WORLD_SIZE")?,
        )
        .timeout(timeout))
    }
}

struct Inner {
    ptr: *mut c_void,
    /// What `average_gradients` has checked of the ranks' variables.
    agreed: std::sync::Mutex<Agreed>,
    /// The collectives this process has started on the group.
    collectives: AtomicU64,
}

/// What the ranks were found to agree on (see [`ProcessGroup::average_gradients`]).
#[derive(Default)]
struct Agreed {
    /// The variables hold the same number of values on every rank.
    sized: bool,
    /// Which variables had gradients when this rank last checked that every rank agrees.
    vars: Option<Vec<bool>>,
}

// SAFETY: c10d's process groups are used from any thread (torch's own DDP calls them from
// its reducer threads); calls from several threads must come in the same order on every
// rank, which is the caller's contract, as in torch.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from hgq_dist_new and is freed once.
        unsafe { hgq_dist_free(self.ptr) }
    }
}

/// A c10d process group: Gloo for CPU tensors, NCCL for CUDA tensors where it was made with
/// NCCL ([`ProcessGroup::has_nccl`]). Cheap to clone (a handle).
#[derive(Clone)]
pub struct ProcessGroup {
    inner: Arc<Inner>,
    rank: usize,
    size: usize,
    nccl: bool,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = if self.nccl { "gloo+nccl" } else { "gloo" };
        write!(f, "ProcessGroup(rank {} of {}, {b})", self.rank, self.size)
    }
}

const ERR_LEN: usize = 1024;

fn call(what: &'static str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut err = vec![0 as c_char; ERR_LEN];
    if f(err.as_mut_ptr(), ERR_LEN) == 0 {
        return Ok(());
    }
    // SAFETY: the C side wrote a NUL-terminated message within the buffer.
    let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Err(TorchError::Distributed { what, why: msg })
}

impl ProcessGroup {
    /// Joins the group `o` describes (every rank calls this; rank 0 serves the rendezvous).
    /// Blocks until all ranks have joined, at most the timeout.
    pub fn new(o: &GroupOptions) -> Result<Self> {
        if o.world_size == 0 || o.rank >= o.world_size {
            return Err(TorchError::Invalid {
                what: "process group",
                why: format!("rank {} of {} processes", o.rank, o.world_size),
            });
        }
        if o.timeout.is_zero() {
            return Err(TorchError::Invalid {
                what: "process group",
                why: "a zero timeout".into(),
            });
        }
        let bad = |what: &str| TorchError::Invalid {
            what: "process group",
            why: format!("{what} contains a NUL byte"),
        };
        let nccl = o.backend.nccl()?;
        let host = CString::new(o.master_addr.clone()).map_err(|_| bad("the address"))?;
        let prefix = CString::new(o.prefix.clone()).map_err(|_| bad("the prefix"))?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let timeout_ms = i64::try_from(o.timeout.as_millis()).unwrap_or(i64::MAX);
        call("joining the process group", |err, len| {
            // SAFETY: valid C strings and an out pointer; the error buffer is `len` long.
            unsafe {
                hgq_dist_new(
                    host.as_ptr(),
                    c_int::from(o.master_port),
                    o.rank as c_int,
                    o.world_size as c_int,
                    timeout_ms,
                    prefix.as_ptr(),
                    c_int::from(nccl),
                    &mut ptr,
                    err,
                    len,
                )
            }
        })?;
        Ok(ProcessGroup {
            inner: Arc::new(Inner {
                ptr,
                agreed: std::sync::Mutex::new(Agreed::default()),
                collectives: AtomicU64::new(0),
            }),
            rank: o.rank,
            size: o.world_size,
            nccl,
        })
    }

    /// Joins from torchrun's environment (see [`GroupOptions::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::new(&GroupOptions::from_env()?)
    }

    /// This process' rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether CUDA tensors are reduced with NCCL on their device (else only CPU tensors are
    /// taken, and the training steps move CUDA gradients through the host).
    pub fn has_nccl(&self) -> bool {
        self.nccl
    }

    fn check(&self, t: &Tensor, what: &'static str) -> Result<()> {
        let device = t.device();
        if device != tch::Device::Cpu && !(self.nccl && device.is_cuda()) {
            return Err(TorchError::Device {
                what,
                expected: tch::Device::Cpu,
                got: device,
            });
        }
        if !t.is_contiguous() {
            return Err(TorchError::Invalid {
                what,
                why: "a non-contiguous tensor".into(),
            });
        }
        Ok(())
    }

    /// The device the collectives of tensors on `device` run on: the device itself where NCCL
    /// takes it, else the host.
    fn wire(&self, device: tch::Device) -> tch::Device {
        if self.nccl && device.is_cuda() {
            device
        } else {
            tch::Device::Cpu
        }
    }

    /// In place: `t` (a contiguous tensor, the same shape and kind on every rank; on the CPU,
    /// or on this rank's CUDA device where the group has NCCL) becomes the reduction of every
    /// rank's. Sizes that differ between ranks are the caller's to rule out: Gloo answers them
    /// by ending the process, which c10d cannot turn into an error (the model-level calls,
    /// [`Self::broadcast_variables`] and [`Self::average_gradients`], check first).
    pub fn all_reduce_(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        self.check(t, "all_reduce tensor")?;
        self.inner.collectives.fetch_add(1, Ordering::Relaxed);
        call("all_reduce", |err, len| {
            // SAFETY: a live tensor; the group lives as long as `self`.
            unsafe { hgq_dist_all_reduce(self.inner.ptr, t.as_ptr(), op.code(), err, len) }
        })
    }

    /// Whether every rank passed the same `values` (one all-reduce of them and their negations
    /// with MAX; every rank learns the answer).
    fn same_everywhere(&self, values: &[i64]) -> Result<bool> {
        let both: Vec<i64> = values
            .iter()
            .copied()
            .chain(values.iter().map(|v| -v))
            .collect();
        let t = Tensor::from_slice(&both);
        self.all_reduce_(&t, ReduceOp::Max)?;
        let r = Vec::<i64>::try_from(&t)?;
        let (max, neg_min) = r.split_at(values.len());
        Ok(max.iter().zip(neg_min).all(|(a, b)| *a == -b))
    }

    /// In place: every rank's `t` becomes rank `root`'s.
    pub fn broadcast_(&self, t: &Tensor, root: usize) -> Result<()> {
        self.check(t, "broadcast tensor")?;
        if root >= self.size {
            return Err(TorchError::Invalid {
                what: "broadcast root",
                why: format!("rank {root} of {}", self.size),
            });
        }
        self.inner.collectives.fetch_add(1, Ordering::Relaxed);
        call("broadcast", |err, len| {
            // SAFETY: as in all_reduce_.
            unsafe { hgq_dist_broadcast(self.inner.ptr, t.as_ptr(), root as c_int, err, len) }
        })
    }

    /// How many collectives (all-reduces, broadcasts, barriers) this process has started on
    /// the group, from any clone of it: on one machine each costs about a millisecond of
    /// Gloo's, so this is what a data-parallel step's overhead is counted in. A native
    /// training step ([`Self::train_step`]) makes one once the ranks agree on the model: the
    /// gradients and every layer's tracked integer bits together.
    pub fn collectives(&self) -> u64 {
        self.inner.collectives.load(Ordering::Relaxed)
    }

    /// Waits until every rank is here (at most the timeout).
    pub fn barrier(&self) -> Result<()> {
        self.inner.collectives.fetch_add(1, Ordering::Relaxed);
        call("barrier", |err, len| {
            // SAFETY: the group lives as long as `self`.
            unsafe { hgq_dist_barrier(self.inner.ptr, err, len) }
        })
    }

    /// Every variable of `vs` (trainable or not: the quantizers' state too) set to rank 0's,
    /// in the order of their names (the same model built on every rank has the same names):
    /// one broadcast per kind of variable, in that kind, so that every value arrives as it is
    /// (an int64 above 2^53 too). First the ranks compare their variables (names, kinds and
    /// sizes, one small all-reduce): stores that differ are an error on every rank, not
    /// values sent to the wrong variables (or a collective of different sizes, which Gloo
    /// answers by ending the process).
    pub fn broadcast_variables(&self, vs: &nn::VarStore) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if !self.same_everywhere(&signature(&vars)?)? {
            return Err(TorchError::Distributed {
                what: "broadcast_variables",
                why: "the ranks' stores hold different variables (names, kinds or sizes)".into(),
            });
        }
        let mut kinds: Vec<Kind> = Vec::new();
        for (_, t) in &vars {
            let k = t.f_kind()?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        for kind in kinds {
            let tensors: Vec<Tensor> = vars
                .iter()
                .filter(|(_, t)| t.kind() == kind)
                .map(|(_, t)| t.shallow_clone())
                .collect();
            let flat = flatten(&tensors, kind, self.wire(device_of(&tensors)))?;
            self.broadcast_(&flat, 0)?;
            unflatten(&flat, &tensors)?;
        }
        Ok(())
    }

    /// This rank's rows of a global batch of `rows`: contiguous, in rank order, sizes that
    /// differ by at most one (with fewer rows than ranks the last ranks get none, which
    /// [`Self::train_step`] refuses).
    pub fn shard(&self, rows: usize) -> Range<usize> {
        let (base, extra) = (rows / self.size, rows % self.size);
        let start = self.rank * base + self.rank.min(extra);
        start..start + base + usize::from(self.rank < extra)
    }

    /// The gradients of `vars` averaged over the ranks, each rank's weighted by its
    /// `local_rows` (so a mean loss over uneven shards is the mean over the global batch),
    /// in one flat all-reduce; a variable without a gradient on every rank is left alone, one
    /// without it on some ranks is an error.
    ///
    /// The all-reduce holds every variable (zeros for a missing gradient), so ranks whose
    /// gradients differ still send the same sizes; the first call checks that the ranks'
    /// variables have the same number of values (one more collective), since a collective of
    /// different sizes is not an error c10d can report. The check that the ranks agree on
    /// which variables have gradients reads the all-reduced counts back, a host
    /// synchronization on a device: it runs where this rank's set differs from the one it
    /// checked last (the first step, or a model that changed), not every step. A global batch
    /// of no rows at all then shows as non-finite gradients (0 / 0), which the optimizer
    /// refuses.
    pub fn average_gradients(&self, vars: &[Tensor], local_rows: usize) -> Result<()> {
        let grads: Vec<Tensor> = vars.iter().map(Tensor::grad).collect();
        self.average(vars, &grads, local_rows, &mut [])
    }

    /// [`Self::average_gradients`] of the native step's gradients (host memory, in the
    /// step's order), sent as the autograd step sends its own: in the order of `vs`'s
    /// trainable variables; in the same collective, `maxima` (the quantizers' pending
    /// tracking) become their maxima over the ranks.
    fn average_native(
        &self,
        vs: &nn::VarStore,
        g: &mut native::Gradients<'_>,
        local_rows: usize,
        maxima: &mut [f64],
    ) -> Result<()> {
        let vars = vs.trainable_variables();
        let index: HashMap<usize, usize> = vars
            .iter()
            .enumerate()
            .map(|(j, v)| (v.data_ptr() as usize, j))
            .collect();
        let mut slots: Vec<Option<&mut Vec<f32>>> = (0..vars.len()).map(|_| None).collect();
        for (var, grad) in g.grads_mut() {
            match index.get(&(var.data_ptr() as usize)) {
                Some(&j) if slots[j].is_none() && grad.len() == vars[j].numel() => {
                    slots[j] = Some(grad)
                }
                _ => {
                    return Err(TorchError::Invalid {
                        what: "train_step",
                        why: "the native step's gradients are not those of the store's \
                              trainable variables"
                            .into(),
                    });
                }
            }
        }
        let grads: Vec<Tensor> = vars
            .iter()
            .zip(&slots)
            .map(|(v, s)| match s {
                Some(g) => Ok(Tensor::f_from_slice(g)?.f_reshape(v.size().as_slice())?),
                None => Ok(Tensor::new()),
            })
            .collect::<Result<_>>()?;
        self.average(&vars, &grads, local_rows, maxima)?;
        for (t, s) in grads.iter().zip(slots) {
            if let Some(g) = s {
                let n = g.len();
                t.f_copy_data(g, n)?;
            }
        }
        Ok(())
    }

    /// The averaging of [`Self::average_gradients`] of `grads` (undefined: none), in place;
    /// in the same collective `maxima` (the same count on every rank) become their maxima
    /// over the ranks.
    fn average(
        &self,
        vars: &[Tensor],
        grads: &[Tensor],
        local_rows: usize,
        maxima: &mut [f64],
    ) -> Result<()> {
        let mine: Vec<bool> = grads.iter().map(Tensor::defined).collect();
        let mut agreed = self
            .inner
            .agreed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wire = self.wire(device_of(vars));
        let values: i64 = vars.iter().map(|v| v.numel() as i64).sum();
        if !agreed.sized {
            let unnamed: Vec<(String, Tensor)> = vars
                .iter()
                .map(|v| (String::new(), v.shallow_clone()))
                .collect();
            if !self.same_everywhere(&signature(&unnamed)?)? {
                return Err(TorchError::Distributed {
                    what: "average_gradients",
                    why: "the ranks' variables differ (count, kinds or shapes)".into(),
                });
            }
            agreed.sized = true;
        }
        // The gradients (zeros where missing) times the rows, then the rows and which
        // variables have gradients.
        let full: Vec<Tensor> = vars
            .iter()
            .zip(grads)
            .map(|(v, g)| {
                if g.defined() {
                    Ok(g.shallow_clone())
                } else {
                    Ok(v.f_zeros_like()?)
                }
            })
            .collect::<Result<_>>()?;
        // In float32 where every variable is (as torch's DDP averages in the gradients' type):
        // half the bytes of float64, and the collectives of larger networks are bandwidth;
        // float64 otherwise. The choice depends on the variables alone, which the ranks were
        // found to share, so every rank sends the same bytes.
        let kind = if vars.iter().all(|v| v.kind() == Kind::Float) {
            Kind::Float
        } else {
            Kind::Double
        };
        let scaled = flatten(&full, kind, wire)?.f_mul_scalar(local_rows as f64)?;
        // A sum that is a gather: each rank's maxima in a slot of its own, zeros in the
        // others', so every rank receives all of them exactly (a value plus zeros) and takes
        // their maximum itself. The native step's maxima are float32 values: exact on either
        // wire.
        let m = maxima.len();
        let mut slots = vec![0.0f64; m * self.size];
        slots[self.rank * m..(self.rank + 1) * m].copy_from_slice(maxima);
        let tail = Tensor::from_slice(
            &std::iter::once(local_rows as f64)
                .chain(mine.iter().map(|&d| f64::from(u8::from(d))))
                .chain(slots)
                .collect::<Vec<_>>(),
        )
        .f_to_kind(kind)?
        .f_to_device(wire)?;
        let buf = Tensor::f_cat(&[scaled, tail], 0)?;
        self.all_reduce_(&buf, ReduceOp::Sum)?;
        // The division by the rows of all ranks on the tensors' device (no read).
        let avg = buf
            .f_narrow(0, 0, values)?
            .f_div(&buf.f_narrow(0, values, 1)?)?;
        if m > 0 {
            let at = values + 1 + mine.len() as i64;
            let all: Vec<f64> = Vec::try_from(
                buf.f_narrow(0, at, (m * self.size) as i64)?
                    .f_to_device(tch::Device::Cpu)?
                    .f_to_kind(Kind::Double)?,
            )?;
            for slot in all.chunks_exact(m) {
                for (v, &o) in maxima.iter_mut().zip(slot) {
                    *v = v.max(o);
                }
            }
        }
        if agreed.vars.as_ref() != Some(&mine) {
            let tail: Vec<f64> = Vec::try_from(
                buf.f_narrow(0, values, 1 + mine.len() as i64)?
                    .f_to_device(tch::Device::Cpu)?
                    .f_to_kind(Kind::Double)?,
            )?;
            let (total, counts) = (tail[0], &tail[1..]);
            if counts
                .iter()
                .zip(&mine)
                .any(|(&c, &d)| c != if d { self.size as f64 } else { 0.0 })
            {
                return Err(TorchError::Distributed {
                    what: "average_gradients",
                    why: "the ranks' models have gradients for different variables".into(),
                });
            }
            if total <= 0.0 {
                return Err(TorchError::Invalid {
                    what: "average_gradients",
                    why: "no rows on any rank".into(),
                });
            }
            agreed.vars = Some(mine.clone());
        }
        // Back into the gradients (a missing one's stand-in zeros take zeros, unused).
        unflatten(&avg, &full)
    }

    /// Installs this group as the quantizers' state sync on this thread (see
    /// [`hgq_core::sync`]) until the guard is dropped: WRAP tracking then reduces with MAX
    /// over the ranks.
    pub fn sync_quantizers(&self) -> SyncGuard {
        hgq_core::sync::install(Arc::new(self.clone()))
    }

    /// One data-parallel training step of a classifier on this rank's rows: the forward in
    /// training mode with the quantizers synchronized, the mean cross entropy plus the EBOPs
    /// and regularization losses, the gradients averaged over the ranks (weighted by rows),
    /// one step of `opt` (the same on every rank), the constraints. `vs` is the store `opt`
    /// trains. Returns this rank's loss and correct count. The step is the native one where
    /// [`Sequential::train_step`] would run it ([`crate::layers::StepPath::Auto`]) on
    /// contiguous copies of `x` and `labels`, else autograd's: the choice follows from the
    /// model and the inputs' kinds and devices, which every rank must share (the two steps'
    /// quantizer synchronizations are not the same collectives). A rank without rows is an
    /// error there (`Invalid`: no rows), and its peers' collective then fails too.
    pub fn train_step(
        &self,
        model: &Sequential,
        vs: &nn::VarStore,
        x: &Tensor,
        labels: &Tensor,
        opt: &mut Adam,
    ) -> Result<StepOutput> {
        let rows = usize::try_from(x.size().first().copied().unwrap_or(0)).unwrap_or(0);
        // A rank's layout must not decide its step: the ranks' collectives must match.
        let (x, labels) = (&x.f_contiguous()?, &labels.f_contiguous()?);
        if let Ok(plan) = native::prepare(model, x, labels) {
            // As `Sequential::train_step`: the native step where it runs (its team of threads
            // held for the forward and backward, and again for the update).
            let threads = rayon::current_num_threads();
            // One collective: the gradients of the data loss averaged, the integer bits every
            // layer's quantizer tracked reduced; then what is the same on every rank (the
            // EBOPs and regularizers and their gradients), Adam and the constraints.
            let mut g = {
                let _sync = self.sync_quantizers();
                let _team = hgq_core::team::session(threads);
                native::forward_backward(model, plan, x, labels)?
            };
            let mut maxima = g.pending_maxima();
            self.average_native(vs, &mut g, rows, &mut maxima)?;
            let _team = hgq_core::team::session(threads);
            let (loss, correct) = g.finish(Some(&maxima))?.apply(opt)?;
            return Ok(StepOutput {
                loss: Tensor::from(loss),
                correct: Tensor::from(correct),
            });
        }
        let mut logits = None;
        let loss = self.train_step_with(vs, rows, opt, || {
            let out = model.forward(x, CallMode::Training)?;
            let mut loss = out
                .y
                .f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0)?
                .f_add(&out.ebops_loss)?;
            if model.has_regularization() {
                loss = loss.f_add(&model.regularization_loss()?)?;
            }
            logits = Some(out.y);
            Ok(loss)
        })?;
        model.apply_constraints()?;
        let Some(y) = logits else {
            return Err(TorchError::Invalid {
                what: "train_step",
                why: "no forward".into(),
            });
        };
        let correct = tch::no_grad(|| -> Result<Tensor> {
            Ok(y.f_argmax(-1, false)?
                .f_eq_tensor(labels)?
                .f_sum(Kind::Int64)?)
        })?;
        Ok(StepOutput { loss, correct })
    }

    /// One data-parallel step of any model (a [`Functional`](crate::layers::Functional) graph,
    /// a loss of one's own): `loss` runs the forward and returns this rank's loss (a mean over
    /// its `local_rows`), with the quantizers synchronized; then the gradients, averaged over
    /// the ranks, and one step of `opt` over `vs`. The model's constraints are the caller's to
    /// apply after it (as after any optimizer step).
    ///
    /// ```no_run
    /// # use hgq_torch::distributed::ProcessGroup;
    /// # use hgq_torch::layers::Functional;
    /// # use hgq_torch::optim::Adam;
    /// # use hgq_torch::hgq_core::CallMode;
    /// # fn f(group: &ProcessGroup, g: &Functional, vs: &tch::nn::VarStore, opt: &mut Adam, x: &tch::Tensor, target: &tch::Tensor) -> hgq_torch::Result<()> {
    /// let rows = x.size()[0] as usize;
    /// group.train_step_with(vs, rows, opt, || {
    ///     let out = g.forward(&[x], CallMode::Training)?;
    ///     Ok((&out.ys[0] - target).square().mean(tch::Kind::Float) + out.ebops_loss)
    /// })?;
    /// g.apply_constraints()?;
    /// # Ok(()) }
    /// ```
    pub fn train_step_with(
        &self,
        vs: &nn::VarStore,
        local_rows: usize,
        opt: &mut Adam,
        loss: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let loss = {
            let _sync = self.sync_quantizers();
            loss()?
        };
        opt.zero_grad();
        loss.f_backward()?;
        self.average_gradients(&vs.trainable_variables(), local_rows)?;
        opt.step()?;
        Ok(loss.f_detach()?)
    }

    /// hgq2's `trace_minmax` over this rank's `batches`, the tracked state reduced over the
    /// ranks batch by batch (every rank must pass the same number of batches: checked first).
    pub fn trace_minmax(&self, model: &Sequential, batches: &[Tensor]) -> Result<u64> {
        if !self.same_everywhere(&[batches.len() as i64])? {
            return Err(TorchError::Invalid {
                what: "trace_minmax",
                why: format!(
                    "this rank passes {} batches, others another number (the same on every rank)",
                    batches.len()
                ),
            });
        }
        let _sync = self.sync_quantizers();
        model.trace_minmax(batches.iter())
    }
}

impl StateSync for ProcessGroup {
    fn max(&self, values: &mut [f64]) -> std::result::Result<(), String> {
        let t = Tensor::from_slice(values);
        self.all_reduce_(&t, ReduceOp::Max)
            .map_err(|e| e.to_string())?;
        let v: Vec<f64> = Vec::try_from(&t).map_err(|e: tch::TchError| e.to_string())?;
        values.copy_from_slice(&v);
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl ProcessGroup {
    /// `t`'s maximum over the ranks where the group reduces tensors on `t`'s device (NCCL
    /// for CUDA tensors; Gloo for a rehearsed step's CPU tensors), without a read to the host;
    /// `None` where it does not (the caller reduces host values instead).
    pub(crate) fn max_on_device(&self, t: &Tensor) -> Result<Option<Tensor>> {
        if crate::host::on_host(t) || self.wire(t.device()) != t.device() {
            return Ok(None);
        }
        let t = t.f_detach_copy()?.f_contiguous()?;
        self.all_reduce_(&t, ReduceOp::Max)?;
        Ok(Some(t))
    }
}

/// What must be the same on every rank before variables are broadcast: their count, their
/// values per kind, and a hash of their names, kinds and shapes (62 bits, so that its negation
/// fits an int64 too).
fn signature(vars: &[(String, Tensor)]) -> Result<Vec<i64>> {
    const KINDS: [Kind; 10] = [
        Kind::Uint8,
        Kind::Int8,
        Kind::Int16,
        Kind::Int,
        Kind::Int64,
        Kind::Half,
        Kind::Float,
        Kind::Double,
        Kind::Bool,
        Kind::BFloat16,
    ];
    let mut per_kind = [0i64; KINDS.len() + 1];
    // FNV-1a over the names, kinds and shapes in order.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, t) in vars {
        let kind = t.f_kind()?;
        let at = KINDS.iter().position(|&k| k == kind).unwrap_or(KINDS.len());
        per_kind[at] += t.numel() as i64;
        eat(name.as_bytes());
        eat(&[0, at as u8]);
        for d in t.size() {
            eat(&d.to_le_bytes());
        }
    }
    let mut sig = vec![vars.len() as i64, (hash >> 2) as i64];
    sig.extend(per_kind);
    Ok(sig)
}

/// The device of the first tensor (the host for none): a model's variables live on one.
fn device_of(ts: &[Tensor]) -> tch::Device {
    ts.first().map_or(tch::Device::Cpu, Tensor::device)
}

/// The tensors' values in one flat tensor of `kind` on `wire` (empty for none): the host for
/// Gloo, so a model on a CUDA device without NCCL goes through the host here (one copy each
/// way per step), or the CUDA device NCCL reduces on.
fn flatten(ts: &[Tensor], kind: Kind, wire: tch::Device) -> Result<Tensor> {
    if ts.is_empty() {
        return Ok(Tensor::zeros([0], (kind, wire)));
    }
    let parts: Vec<Tensor> = ts
        .iter()
        .map(|t| {
            Ok(t.f_detach()?
                .f_to_device(wire)?
                .f_to_kind(kind)?
                .f_reshape([-1])?)
        })
        .collect::<Result<_>>()?;
    Ok(Tensor::f_cat(&parts, 0)?.f_contiguous()?)
}

/// Copies `flat`'s values back into `ts` (in their kinds), in order.
fn unflatten(flat: &Tensor, ts: &[Tensor]) -> Result<()> {
    let mut at = 0i64;
    tch::no_grad(|| -> Result<()> {
        for t in ts {
            let n = t.numel() as i64;
            let part = flat
                .f_narrow(0, at, n)?
                .f_reshape(t.size().as_slice())?
                .f_to_kind(t.kind())?
                .f_to_device(t.device())?;
            t.shallow_clone().f_copy_(&part)?;
            at += n;
        }
        Ok(())
    })
}
