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
            Tokenizer = Tokenizer.Load(modelPath);
        }
        catch
        {
            Head?.Dispose();
            _model.Dispose();
            throw;
        }
        Info = _model.Info;
        Name = servedName ?? NameOf(Info, modelPath);
        Created = new DateTimeOffset(File.GetLastWriteTimeUtc(modelPath)).ToUnixTimeSeconds();
    }

    public ModelInfo Info { get; }
    public ModelHead Head { get; }
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
        Tokenizer.Dispose();
        Head.Dispose();
        _model.Dispose();
    }
}
