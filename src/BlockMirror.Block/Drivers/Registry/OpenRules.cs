namespace BlockMirror.Block.Drivers.Registry;

/// <summary>How strictly the registry treats the top node it is asked to open.</summary>
public sealed record OpenRules
{
    /// <summary>blockdev-add's rule: the root node must be named.</summary>
    public bool NameRequired { get; init; }

    /// <summary>Also drivers QEMU does not offer (memory): for code, never for a user's options.</summary>
    public bool InternalDrivers { get; init; }

    /// <summary>The format of an image opened by file name was probed (raw then guards its first block).</summary>
    internal bool ProbedFormat { get; init; }

    /// <summary>The images above this one while a backing chain is being opened, to refuse a loop.</summary>
    internal IReadOnlyList<string> Chain { get; init; } = [];

    public static OpenRules BlockdevAdd { get; } = new() { NameRequired = true };
}
