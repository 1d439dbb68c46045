using Potluck.Inference.Engine;
using Potluck.Inference.Gguf;
using Potluck.Inference.Native;
using Potluck.Inference.Text;

namespace Potluck.Gateway.Head;

/// <summary>
/// The gateway's part of the model: tokenizer and chat template (llama.cpp, vocab only), and the head tensors
/// (embedding, final norm, LM head). Layer weights are never bound here; the nodes hold them.
/// </summary>
public sealed class ModelFrontEnd : IDisposable
{
    private readonly GgufModel _model;

    public ModelFrontEnd(string modelPath, int threads, string? servedName = null)
    {
        NativeRuntime.EnsureLoaded();
        _model = GgufModel.Open(modelPath);
        try
        {
            Head = new ModelHead(_model, threads);
            Logits = new HeadBatcher(Head);
            Tokenizer = Tokenizer.Load(modelPath);
        }
        catch
        {
            Logits?.Dispose();
            Head?.Dispose();
            _model.Dispose();
            throw;
        }
        Info = _model.Info;
        Name = servedName ?? NameOf(Info, modelPath);
        Created = new DateTimeOffset(File.GetLastWriteTimeUtc(modelPath)).ToUnixTimeSeconds();
    }

    public ModelInfo Info { get; }

    /// <summary>Bounds how many prompts are tokenized at once (llama.cpp cannot stop one midway).</summary>
    public TokenizerSlots TokenizerSlots { get; } = new(Math.Max(1, Environment.ProcessorCount));
    public ModelHead Head { get; }
    /// <summary>The LM head, batched over every generation ready at the same moment.</summary>
    public HeadBatcher Logits { get; }
    public Tokenizer Tokenizer { get; }

    /// <summary>The id the OpenAI API serves the model under.</summary>
    public string Name { get; }

    /// <summary>Unix time the API reports as the model's creation.</summary>
    public long Created { get; }

    public string ModelId => Info.ModelId;
    public int LayerCount => Info.LayerCount;
    public int Width => Head.Width;
    public int VocabSize => Head.VocabSize;
    public int ContextLength => Info.ContextLength;

    /// <summary>general.name when the file has one, otherwise the file name without extension.</summary>
    public static string NameOf(ModelInfo info, string path) =>
        !string.IsNullOrWhiteSpace(info.Name) ? info.Name.Trim() : Path.GetFileNameWithoutExtension(path);

    public void Dispose()
    {
        TokenizerSlots.Dispose();
        Tokenizer.Dispose();
        Logits.Dispose();
        Head.Dispose();
        _model.Dispose();
    }
}

/// <summary>No tokenizer slot freed up within the timeout: every slot is busy with other prompts.</summary>
public sealed class TokenizerBusyException(string message) : Exception(message);

/// <summary>
/// Runs tokenizer calls on a fixed set of worker threads, one call per thread at a time, each awaited for at most a
/// timeout. A call past its timeout keeps its thread until llama.cpp returns, so abandoned work still counts against
/// the bound. Dedicated threads also keep the tokenizer's native memory (one malloc arena per thread) bounded,
/// where thread-pool threads would each grow their own.
/// </summary>
public sealed class TokenizerSlots : IDisposable
{
    private readonly int _count;
    private readonly SemaphoreSlim _free;
    private readonly System.Collections.Concurrent.BlockingCollection<Action> _queue = new();

    public TokenizerSlots(int slots)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(slots, 1);
        _count = slots;
        _free = new SemaphoreSlim(slots, slots);
        for (var i = 0; i < slots; i++)
            new Thread(Work) { IsBackground = true, Name = $"potluck-tokenizer-{i}" }.Start();
    }

    private void Work()
    {
        foreach (var item in _queue.GetConsumingEnumerable()) item();
    }

    /// <exception cref="TokenizerBusyException">No slot within <paramref name="timeout"/>.</exception>
    /// <exception cref="TimeoutException">The work took longer than what was left of <paramref name="timeout"/>.</exception>
    public async Task<T> RunAsync<T>(Func<T> work, TimeSpan timeout, CancellationToken ct)
    {
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        if (!await _free.WaitAsync(timeout, ct))
            throw new TokenizerBusyException($"All {_count} tokenizer slots stayed busy for {timeout.TotalSeconds:0.###} s; retry shortly.");
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            // A slot was free, so a worker is idle and starts this at once.
            _queue.Add(() =>
            {
                try
                {
                    done.TrySetResult(work());
                }
                catch (Exception e)
                {
                    done.TrySetException(e);
                }
                finally
                {
                    _free.Release();
                }
            }, CancellationToken.None);
        }
        catch (InvalidOperationException)
        {
            _free.Release();
            throw new ObjectDisposedException(nameof(TokenizerSlots));
        }
        var left = timeout - System.Diagnostics.Stopwatch.GetElapsedTime(started);
        return await done.Task.WaitAsync(left > TimeSpan.Zero ? left : TimeSpan.Zero, ct);
    }

    /// <summary>Stops the workers once their current call returns.</summary>
    public void Dispose() => _queue.CompleteAdding();
}
