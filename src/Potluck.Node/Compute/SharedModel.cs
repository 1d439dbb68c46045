using Potluck.Inference.Engine;

namespace Potluck.Node.Compute;

/// <summary>
/// One <see cref="GgufModel"/> per file per process, reference counted: a tensor can be bound only once
/// per process, so every span (and head) in the process must share the model object.
/// </summary>
public static class SharedModel
{
    private static readonly Lock Gate = new();
    private static readonly Dictionary<string, Entry> Models = new(StringComparer.Ordinal);

    public static Lease Acquire(string path)
    {
        var full = Path.GetFullPath(path);
        lock (Gate)
        {
            if (!Models.TryGetValue(full, out var entry))
            {
                entry = new Entry(GgufModel.Open(full));
                Models[full] = entry;
            }
            entry.References++;
            return new Lease(full, entry.Model);
        }
    }

    private static void Release(string path)
    {
        lock (Gate)
        {
            if (!Models.TryGetValue(path, out var entry)) return;
            if (--entry.References > 0) return;
            Models.Remove(path);
            entry.Model.Dispose();
        }
    }

    private sealed class Entry(GgufModel model)
    {
        public GgufModel Model { get; } = model;
        public int References { get; set; }
    }

    public sealed class Lease(string path, GgufModel model) : IDisposable
    {
        private int _disposed;
        public GgufModel Model { get; } = model;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) Release(path);
        }
    }
}
