namespace BlockMirror.Block.Drivers;

/// <summary>QAPI's PreallocMode: how much of a new image's space is allocated when it is created or grown.</summary>
public enum PreallocationMode
{
    /// <summary><c>off</c>: nothing beyond what the format needs.</summary>
    Off,

    /// <summary><c>metadata</c>: a format's tables for the whole size (qcow2), no data.</summary>
    Metadata,

    /// <summary><c>falloc</c>: the space is reserved with fallocate(2), nothing written.</summary>
    Falloc,

    /// <summary><c>full</c>: every byte is written (zeroes).</summary>
    Full,
}

/// <summary>QAPI's spellings of <see cref="PreallocationMode"/>.</summary>
public static class PreallocationModes
{
    /// <summary>The values QAPI accepts, in its order.</summary>
    public static readonly string[] Names = ["off", "metadata", "falloc", "full"];

    public static PreallocationMode Parse(string name) => (PreallocationMode)Array.IndexOf(Names, name);

    public static string ToWireName(this PreallocationMode mode) => Names[(int)mode];
}
