// A small C ABI over TensorRT's C++ API (TensorRT >= 10), for engine/src/trt_native.rs.
//
// Builds strongly typed networks from explicitly typed ONNX (FP16 types, symmetric Q/DQ), so the
// same code serves TensorRT 10 and 11 (11 removed the precision builder flags). What differs
// between releases is chosen with NV_TENSORRT_MAJOR / NV_TENSORRT_MINOR; .ci/run compiles this
// file with -Wall -Wextra -Werror against the public headers of 10.0, 10.13 and 11.1. Errors are
// written into a caller-provided buffer; nothing here throws across the ABI.

#include <NvInfer.h>
#include <NvInferVersion.h>
#include <NvOnnxParser.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#if NV_TENSORRT_MAJOR < 10
#error "overparam's native TensorRT path needs TensorRT 10 or newer (strongly typed networks)"
#endif

namespace {

// Keeps warnings and errors (and, when asked, info) as the build log.
class Logger final : public nvinfer1::ILogger {
public:
    explicit Logger(bool verbose) : verbose_(verbose) {}
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity > Severity::kINFO || (severity == Severity::kINFO && !verbose_)) return;
        static char const* names[] = {"internal error", "error", "warning", "info", "verbose"};
        std::lock_guard<std::mutex> lock(mu_);
        try {
            text_ += "[";
            text_ += names[static_cast<int>(severity)];
            text_ += "] ";
            text_ += msg;
            text_ += "\n";
        } catch (...) {
        }
    }
    std::string text() {
        std::lock_guard<std::mutex> lock(mu_);
        return text_;
    }

private:
    bool verbose_;
    std::mutex mu_;
    std::string text_;
};

void put(char* buf, size_t cap, std::string const& s) {
    if (buf == nullptr || cap == 0) return;
    size_t n = s.size() < cap - 1 ? s.size() : cap - 1;
    std::memcpy(buf, s.data(), n);
    buf[n] = '\0';
}

}  // namespace

struct OpmEngine {
    std::unique_ptr<Logger> logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
};

extern "C" {

int32_t opm_trt_version() { return getInferLibVersion(); }

// What a build is asked for, and where its results go (two structs, so the ABI does not grow a
// parameter per option; engine/src/trt_native.rs mirrors both with #[repr(C)]).
struct OpmBuildOptions {
    size_t workspace_bytes;
    int dla_core;  // < 0: the GPU
    void const* timing_cache;
    size_t timing_cache_len;
    int verbose;
};

struct OpmBuildOutput {
    void* plan;  // free with opm_trt_free
    size_t plan_len;
    void* cache;  // the updated timing cache, free with opm_trt_free
    size_t cache_len;
    char* log;  // caller's buffer, truncated to log_cap
    size_t log_cap;
};

// Parses ONNX bytes and builds a serialized plan. On success returns 0 and sets out->plan /
// out->plan_len; out->cache / out->cache_len receive the updated timing cache. The build log
// goes to out->log.
int opm_trt_build(void const* onnx, size_t onnx_len, OpmBuildOptions const* opts,
                  OpmBuildOutput* out) {
    out->plan = nullptr;
    out->plan_len = 0;
    out->cache = nullptr;
    out->cache_len = 0;
    size_t const workspace_bytes = opts->workspace_bytes;
    int const dla_core = opts->dla_core;
    int const verbose = opts->verbose;
    Logger logger(verbose != 0);
    std::string err;
    try {
        std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger));
        if (!builder) throw std::runtime_error("createInferBuilder failed");
#if NV_TENSORRT_MAJOR >= 11
        // TensorRT 11 networks are always strongly typed; kSTRONGLY_TYPED is deprecated there
        // (and ignored), so no flag is set.
        nvinfer1::NetworkDefinitionCreationFlags const flags = 0;
#else
        // TensorRT 10 builds weakly typed networks unless asked; the ONNX carries the types.
        nvinfer1::NetworkDefinitionCreationFlags const flags =
            1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#endif
        std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(flags));
        std::unique_ptr<nvonnxparser::IParser> parser(
            nvonnxparser::createParser(*network, logger));
        if (!parser->parse(onnx, onnx_len)) {
            std::string m = "the ONNX parser refused the model:";
            for (int32_t i = 0; i < parser->getNbErrors(); ++i) {
                m += " ";
                m += parser->getError(i)->desc();
                m += ";";
            }
            throw std::runtime_error(m);
        }
        std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
        config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, workspace_bytes);
        if (dla_core >= 0) {
            config->setDefaultDeviceType(nvinfer1::DeviceType::kDLA);
            config->setDLACore(dla_core);
            config->setFlag(nvinfer1::BuilderFlag::kGPU_FALLBACK);
        }
        std::unique_ptr<nvinfer1::ITimingCache> tc(
            config->createTimingCache(opts->timing_cache, opts->timing_cache_len));
        if (tc) config->setTimingCache(*tc, /*ignoreMismatch=*/false);
        std::unique_ptr<nvinfer1::IHostMemory> blob(
            builder->buildSerializedNetwork(*network, *config));
        if (!blob || blob->size() == 0) throw std::runtime_error("buildSerializedNetwork failed");
        out->plan = std::malloc(blob->size());
        if (out->plan == nullptr) throw std::bad_alloc();
        std::memcpy(out->plan, blob->data(), blob->size());
        out->plan_len = blob->size();
        if (auto const* used = config->getTimingCache()) {
            std::unique_ptr<nvinfer1::IHostMemory> c(used->serialize());
            if (c && c->size() > 0 && (out->cache = std::malloc(c->size())) != nullptr) {
                std::memcpy(out->cache, c->data(), c->size());
                out->cache_len = c->size();
            }
        }
    } catch (std::exception const& e) {
        err = e.what();
    } catch (...) {
        err = "unknown C++ exception";
    }
    std::string text = logger.text();
    if (!err.empty()) text += "[error] " + err + "\n";
    put(out->log, out->log_cap, text);
    return err.empty() ? 0 : 1;
}

void opm_trt_free(void* p) { std::free(p); }

// Deserializes a plan and creates one execution context. Returns null and writes `err` on failure
// (a plan from another TensorRT version or GPU fails here).
OpmEngine* opm_trt_engine_load(void const* plan, size_t plan_len, char* err, size_t err_cap) {
    auto e = std::make_unique<OpmEngine>();
    try {
        e->logger = std::make_unique<Logger>(false);
        e->runtime.reset(nvinfer1::createInferRuntime(*e->logger));
        if (!e->runtime) throw std::runtime_error("createInferRuntime failed");
        e->engine.reset(e->runtime->deserializeCudaEngine(plan, plan_len));
        if (!e->engine) throw std::runtime_error("deserializeCudaEngine failed");
        e->context.reset(e->engine->createExecutionContext());
        if (!e->context) throw std::runtime_error("createExecutionContext failed");
    } catch (std::exception const& x) {
        put(err, err_cap, std::string(x.what()) + "\n" + (e->logger ? e->logger->text() : ""));
        return nullptr;
    }
    return e.release();
}

void opm_trt_engine_free(OpmEngine* e) { delete e; }

int32_t opm_trt_io_count(OpmEngine const* e) { return e->engine->getNbIOTensors(); }

// Tensor `i`: its name (valid while the engine lives), whether it is an input, its data type
// (nvinfer1::DataType as int) and its dimensions (up to 8).
char const* opm_trt_io(OpmEngine const* e, int32_t i, int* is_input, int* dtype, int* nb_dims,
                       int64_t* dims) {
    char const* name = e->engine->getIOTensorName(i);
    if (name == nullptr) return nullptr;
    *is_input = e->engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT;
    *dtype = static_cast<int>(e->engine->getTensorDataType(name));
    nvinfer1::Dims d = e->engine->getTensorShape(name);
    *nb_dims = d.nbDims;
    for (int k = 0; k < d.nbDims && k < 8; ++k) dims[k] = d.d[k];
    return name;
}

int opm_trt_set_address(OpmEngine* e, char const* name, void* device_ptr) {
    return e->context->setTensorAddress(name, device_ptr) ? 0 : 1;
}

// Enqueues one inference on `stream` (a CUstream, which is a cudaStream_t).
int opm_trt_enqueue(OpmEngine* e, void* stream) {
    return e->context->enqueueV3(static_cast<cudaStream_t>(stream)) ? 0 : 1;
}

}  // extern "C"
