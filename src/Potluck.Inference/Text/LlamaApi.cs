using LLama.Native;
using Potluck.Inference.Native;

namespace Potluck.Inference.Text;

/// <summary>
/// Readies LLamaSharp for direct use. Some LLamaSharp calls (e.g. LLamaModelQuantizeParams.Default inside
/// LLamaQuantizer) P/Invoke libllama before NativeApi's static constructor has installed LLamaSharp's library
/// resolver, and then fail with DllNotFoundException; touching NativeApi first avoids that.
/// </summary>
internal static class LlamaApi
{
    private static volatile bool _ready;

    public static void EnsureReady()
    {
        if (_ready) return;
        NativeRuntime.EnsureLoaded();
        NativeApi.llama_empty_call();
        _ready = true;
    }
}
