using System.Runtime.InteropServices;

namespace Potluck.Inference.Native;

/// <summary>
/// Address space reserved for a KV cache: pages cost no memory until written, and <see cref="Discard"/> gives written
/// pages back. So a session's cache can be laid out contiguously for its whole context (attention reads it as one
/// view, as llama.cpp's per-sequence stream does) while memory is spent only on the blocks it has filled.
/// mmap with MAP_NORESERVE on Linux and macOS; elsewhere zeroed native memory (committed up front).
/// </summary>
internal sealed unsafe class ReservedMemoryHandle : SafeHandle
{
    private const int ProtRead = 1, ProtWrite = 2;
    private const int MapPrivate = 2;
    private const int MadvDontNeed = 4;
    private static readonly IntPtr MapFailed = new(-1);

    private bool _mapped;

    private ReservedMemoryHandle() : base(IntPtr.Zero, true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public nuint Size { get; private set; }

    /// <summary>Page size of the system (the unit <see cref="Discard"/> frees).</summary>
    public static nuint PageSize { get; } = (nuint)Environment.SystemPageSize;

    public static ReservedMemoryHandle Reserve(nuint size, string what)
    {
        size = Math.Max(PageSize, (size + PageSize - 1) / PageSize * PageSize);
        var h = new ReservedMemoryHandle { Size = size };
        IntPtr address;
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
        {
            // Anonymous, private, not charged against swap: pages materialize (zeroed) on first write.
            var flags = MapPrivate | (OperatingSystem.IsLinux() ? 0x20 | 0x4000 : 0x1000 | 0x40);
            address = mmap(IntPtr.Zero, size, ProtRead | ProtWrite, flags, -1, 0);
            if (address == MapFailed)
                throw new OutOfMemoryException($"could not reserve {size / 1048576.0:F1} MiB of address space for {what} (errno {Marshal.GetLastPInvokeError()})");
            h._mapped = true;
        }
        else
        {
            address = (IntPtr)NativeMemory.AlignedAlloc(size, PageSize);
            if (address == IntPtr.Zero) throw new OutOfMemoryException($"could not allocate {size / 1048576.0:F1} MiB for {what}");
            NativeMemory.Clear((void*)address, size);
        }
        h.SetHandle(address);
        return h;
    }

    /// <summary>
    /// Gives back the whole pages inside [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>);
    /// their contents are undefined afterwards. Partial pages at either end are kept.
    /// </summary>
    public void Discard(nuint offset, nuint length)
    {
        if (!_mapped || length == 0) return;
        var first = (offset + PageSize - 1) / PageSize * PageSize;
        var end = Math.Min(Size, (offset + length) / PageSize * PageSize);
        if (end <= first) return;
        _ = madvise(handle + (nint)first, end - first, MadvDontNeed);
    }

    protected override bool ReleaseHandle()
    {
        if (_mapped) return munmap(handle, Size) == 0;
        NativeMemory.AlignedFree((void*)handle);
        return true;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern IntPtr mmap(IntPtr address, nuint length, int protection, int flags, int fd, nint offset);

    [DllImport("libc", SetLastError = true)]
    private static extern int munmap(IntPtr address, nuint length);

    [DllImport("libc", SetLastError = true)]
    private static extern int madvise(IntPtr address, nuint length, int advice);
}
