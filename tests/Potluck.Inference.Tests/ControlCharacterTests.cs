using Potluck.Inference.Text;

namespace Potluck.Inference.Tests;

public sealed class ControlCharacterTests
{
    [Fact]
    public void TerminalControlsAreRemovedAndNewlinesAndTabsKept()
    {
        Assert.Equal("[31mred text[0m\n\tdone", ControlCharacters.Strip("\u001b[31mred text\u001b[0m\r\n\tdone\u0007"));
        Assert.Equal("abc", ControlCharacters.Strip("a\bb\u007fc\u0085"));
        Assert.Equal("", ControlCharacters.Strip("\u0000\u001f"));
    }

    [Fact]
    public void CleanTextIsReturnedAsIs()
    {
        const string text = "Fortune favours the bold.\n\t-- Virgil ▁ é ✓";
        Assert.Same(text, ControlCharacters.Strip(text));
    }
}
