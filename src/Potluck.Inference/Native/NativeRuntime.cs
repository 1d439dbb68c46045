using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using LLama.Native;

namespace Potluck.Inference.Native;

/// <summary>
/// Loads exactly one copy of ggml and llama.cpp per process: the CPU variant folder shipped by
/// LLamaSharp.Backend.Cpu that matches this CPU, used both by our P/Invokes and by LLamaSharp.
/// </summary>
public static class NativeRuntime
{
    internal const string GgmlBase = "ggml-base";
    internal const string GgmlCpu = "ggml-cpu";
    internal const string Ggml = "ggml";
    internal const string Llama = "llama";

    private static readonly Lock Gate = new();
    private static string? _folder;
    private static IntPtr _ggmlBase, _ggmlCpu, _ggml, _llama;

    /// <summary>The folder the native libraries were loaded from.</summary>
    public static string Folder => EnsureLoaded();

    /// <summary>The CPU variant in use: avx512, avx2, avx or noavx.</summary>
    public static string Variant => Path.GetFileName(EnsureLoaded());

    /// <summary>Loads the libraries once; safe to call from anywhere, any number of times.</summary>
    public static string EnsureLoaded()
    {
        if (_folder is not null) return _folder;
        lock (Gate)
        {
            if (_folder is not null) return _folder;
            var folder = ResolveFolder();
            PreferPassiveOpenMpThreads();
            _ggmlBase = NativeLibrary.Load(Path.Combine(folder, "libggml-base.so"));
            _ggmlCpu = NativeLibrary.Load(Path.Combine(folder, "libggml-cpu.so"));
            _ggml = NativeLibrary.Load(Path.Combine(folder, "libggml.so"));
            NativeLibrary.SetDllImportResolver(typeof(NativeRuntime).Assembly, Resolve);
            // LLamaSharp must bind the libllama next to the ggml we just loaded, never a second copy.
            NativeLibraryConfig.All.WithLibrary(
                Path.Combine(folder, "libllama.so"),
                Path.Combine(folder, "libmtmd.so"));
            // llama.cpp logs every tensor it loads; keep warnings and errors unless a host routes the log.
            NativeLibraryConfig.All.WithLogCallback(DefaultLog);
            // LLamaSharp installs its import resolver in NativeApi's static constructor; types with their own
            // imports (the quantizer's default params) fail if they run first, so trigger it now.
            NativeApi.llama_empty_call();
            // The same file LLamaSharp bound (dlopen hands back its handle), for our few direct llama.cpp imports.
            _llama = NativeLibrary.Load(Path.Combine(folder, "libllama.so"));
            _folder = folder;
            return folder;
        }
    }

    private static LLamaLogLevel _lastLevel = LLamaLogLevel.Info;

    private static void DefaultLog(LLamaLogLevel level, string message)
    {
        // Continue lines belong to the previous message's level.
        if (level != LLamaLogLevel.Continue) _lastLevel = level;
        if (_lastLevel is LLamaLogLevel.Warning or LLamaLogLevel.Error) Console.Error.Write(message);
    }

    /// <summary>Sends llama.cpp and ggml log lines to <paramref name="logger"/> instead of stderr.</summary>
    public static void RouteNativeLog(Microsoft.Extensions.Logging.ILogger logger)
    {
        EnsureLoaded();
        NativeLogConfig.llama_log_set(logger);
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path) => name switch
    {
        GgmlBase => _ggmlBase,
        GgmlCpu => _ggmlCpu,
        Ggml => _ggml,
        Llama => _llama,
        _ => IntPtr.Zero,
    };

    [DllImport("libc", EntryPoint = "setenv")]
    private static extern int SetNativeEnvironment(
        [MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);

    /// <summary>
    /// ggml's CPU backend runs on OpenMP, whose idle workers spin for milliseconds after each graph by default.
    /// A pool puts several engine processes on one machine that take turns (stage after stage), so spinning
    /// idle workers steal the cores the active stage needs. libgomp reads OMP_WAIT_POLICY from the native
    /// environment when it loads, so it is set there (unless the user chose a policy) before ggml is loaded.
    /// </summary>
    private static void PreferPassiveOpenMpThreads()
    {
        if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is null)
            SetNativeEnvironment("OMP_WAIT_POLICY", "PASSIVE", 0);
    }

    private static string ResolveFolder()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            throw new PlatformNotSupportedException(
                $"Potluck's engine ships native ggml for linux-x64 only; this is {RuntimeInformation.OSDescription} {RuntimeInformation.ProcessArchitecture}.");

        var root = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native");
        var variant = SelectVariant(Environment.GetEnvironmentVariable(VariantVariable));
        var folder = Path.Combine(root, variant);
        if (!File.Exists(Path.Combine(folder, "libggml-base.so")))
            throw new DllNotFoundException(
                $"native ggml variant '{variant}' not found under {root}; the LLamaSharp.Backend.Cpu runtimes folder is missing from the build output.");
        return folder;
    }

    /// <summary>The environment variable that overrides the detected CPU variant.</summary>
    public const string VariantVariable = "POTLUCK_GGML_VARIANT";

    /// <summary>The CPU variant folders LLamaSharp.Backend.Cpu ships; the only values <see cref="VariantVariable"/> may take.</summary>
    public static readonly IReadOnlyList<string> KnownVariants = ["avx512", "avx2", "avx", "noavx"];

    /// <summary>
    /// The variant to load: <paramref name="requested"/> (the environment override) when set, else the best one this CPU
    /// runs. The value becomes a path segment, so only the known names are accepted (never a path).
    /// </summary>
    /// <exception cref="EngineException">The requested name is not one of <see cref="KnownVariants"/>.</exception>
    public static string SelectVariant(string? requested)
    {
        if (string.IsNullOrWhiteSpace(requested)) return DetectVariant();
        var name = requested.Trim();
        foreach (var known in KnownVariants)
            if (string.Equals(known, name, StringComparison.OrdinalIgnoreCase)) return known;
        throw new EngineException(
            $"{VariantVariable} is '{requested}': expected one of {string.Join(", ", KnownVariants)} (or unset to detect the CPU's)");
    }

    private static string DetectVariant()
    {
        if (Avx512F.IsSupported) return "avx512";
        if (Avx2.IsSupported && Fma.IsSupported) return "avx2";
        if (Avx.IsSupported) return "avx";
        return "noavx";
    }
}
