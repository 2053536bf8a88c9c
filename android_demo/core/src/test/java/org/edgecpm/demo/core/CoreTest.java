package org.edgecpm.demo.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import org.json.JSONObject;
import org.junit.jupiter.api.Test;

class CoreTest {
    @Test
    void manifestReadsEveryField() throws Exception {
        BundleManifest m = Fixtures.parsed();
        assertEquals("model.pte", m.modelFile);
        assertEquals(16, m.maxSeqLen);
        assertEquals(Arrays.asList(2, 600), m.eosIds);
        assertEquals(Arrays.asList("</s>", "<|im_end|>"), m.stopTexts());
        assertEquals(2, m.benchmarkPrompts.size());
        assertEquals(6, m.phoneProfiles.get("big-phone").threads);
    }

    @Test
    void manifestRefusesOtherSchemasAndMissingFields() throws Exception {
        JSONObject j = Fixtures.manifest();
        j.getJSONObject("extra").getJSONObject("android").put("schema", "edgecpm.android-bundle/0");
        BundleException e = assertThrows(BundleException.class, () -> BundleManifest.parse(j.toString(), null));
        assertTrue(e.getMessage().contains("repackage"));
        JSONObject k = Fixtures.manifest();
        k.getJSONObject("extra").getJSONObject("android").remove("kv_bytes_per_token");
        assertThrows(BundleException.class, () -> BundleManifest.parse(k.toString(), null));
        JSONObject g = Fixtures.manifest().put("format", "gguf");
        assertThrows(BundleException.class, () -> BundleManifest.parse(g.toString(), null));
        assertThrows(BundleException.class, () -> BundleManifest.parse("{not json", null));
    }

    @Test
    void promptStartDependsOnFirstRole() throws Exception {
        PromptFormat f = Fixtures.parsed().promptFormat;
        String withSystem = f.render(Arrays.asList(new ChatMessage("system", "S"), new ChatMessage("user", "u")), true);
        assertEquals("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n",
                withSystem);
        String noSystem = f.render(Collections.singletonList(new ChatMessage("user", "u")), false);
        assertEquals("<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nu<|im_end|>\n", noSystem);
        assertThrows(IllegalArgumentException.class,
                () -> f.render(Collections.singletonList(new ChatMessage("tool", "x")), true));
    }

    @Test
    void streamNeverSplitsAUtf8Character() {
        String text = "né 你好 🙂!";
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        TextStream s = new TextStream(Collections.<String>emptyList());
        StringBuilder shown = new StringBuilder();
        for (byte b : bytes) {
            String out = s.pushBytes(new byte[] {b});
            for (char c : out.toCharArray()) {
                assertTrue(c != '\uFFFD', "replacement character shown");
            }
            if (!out.isEmpty()) {
                assertTrue(!Character.isHighSurrogate(out.charAt(out.length() - 1)));
            }
            shown.append(out);
        }
        shown.append(s.finish());
        assertEquals(text, shown.toString());
    }

    @Test
    void streamHoldsALoneHighSurrogateAndCutsAtStopText() {
        TextStream s = new TextStream(Arrays.asList("<|im_end|>"));
        String emoji = "🙂";
        assertEquals("a", s.push("a" + emoji.charAt(0)));
        assertEquals(emoji + " b", s.push(emoji.charAt(1) + " b<|im"));
        assertEquals("", s.push("_en"));
        assertEquals("<|im_enc", s.push("c"));  // not a stop text after all: released
        assertEquals("", s.push("<|im_end|>tail"));
        assertTrue(s.stopped());
        assertEquals("a" + emoji + " b<|im_enc", s.text());
        TextStream t = new TextStream(Arrays.asList("<|im_end|>"));
        assertEquals("x", t.push("x<|im_"));
        assertEquals("", t.push("end|>y"));
        assertEquals("x", t.text());
        TextStream u = new TextStream(Collections.<String>emptyList());
        u.pushBytes(new byte[] {(byte) 0xe4, (byte) 0xbd});
        assertEquals("\uFFFD", u.finish());
    }

    @Test
    void statsFromRunnerJson() {
        GenerationStats g = GenerationStats.fromRunnerJson("{\"prompt_tokens\":100,\"generated_tokens\":11,"
                + "\"model_load_start_ms\":1,\"model_load_end_ms\":2,\"inference_start_ms\":1000,"
                + "\"inference_end_ms\":2200,\"prompt_eval_end_ms\":1200,\"first_token_ms\":1200,"
                + "\"aggregate_sampling_time_ms\":3,\"SCALING_FACTOR_UNITS_PER_SECOND\":1000}");
        assertEquals(500.0, g.prefillTokensPerSecond(), 1e-9);
        assertEquals(10.0, g.decodeTokensPerSecond(), 1e-9);
        assertEquals(200.0, g.ttftMs, 1e-9);
        assertTrue(g.summary().startsWith("10.0 tok/s"));
        MemoryStats mem = MemoryStats.parseProcStatus("Name:\tapp\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n");
        assertEquals(1024L * 1024, mem.rssBytes);
        assertEquals(2048L * 1024, mem.peakRssBytes);
    }

    @Test
    void settingsFitTheMemoryBudget() throws Exception {
        BundleManifest m = Fixtures.parsed();
        Settings big = Settings.forChat(m, DeviceInfo.fromProfile(m.phoneProfiles.get("big-phone")));
        assertEquals(4096, big.contextTokens);
        assertEquals(1, big.numBos);
        assertEquals(Settings.CHAT_TEMPERATURE, big.temperature, 0f);
        Settings small = Settings.forBenchmark(m, DeviceInfo.fromProfile(m.phoneProfiles.get("small-phone")));
        assertEquals(600, small.contextTokens);
        assertEquals(0f, small.temperature, 0f);
        assertEquals(Settings.CHAT_REPLY_TOKENS, big.replyTokens("Hi"));
        String longPrompt = new String(new char[400]).replace('\0', 'x') + "n\u00e9"; // é is 2 UTF-8 bytes
        assertEquals(600 - 1 - (403 + 1), small.replyTokens(longPrompt));
        assertEquals(0, small.replyTokens(new String(new char[700]).replace('\0', 'x')));
        assertThrows(BundleException.class,
                () -> Settings.forChat(m, DeviceInfo.fromProfile(m.phoneProfiles.get("tiny-phone"))));
    }

    @Test
    void chatSessionRendersHistoryAndStopsAtEos() throws Exception {
        BundleManifest m = Fixtures.parsed();
        Fixtures.FakeEngine engine = new Fixtures.FakeEngine();
        engine.pieces = Arrays.asList("Hel", "lo", "<|im_end|>", "never");
        ChatSession chat = new ChatSession(m, engine, Settings.forChat(m, new DeviceInfo("x", 8L << 30, 4)));
        final StringBuilder shown = new StringBuilder();
        assertEquals("Hello", chat.send("Hi", shown::append));
        assertEquals("Hello", shown.toString());
        assertTrue(engine.stopped);
        engine.pieces = Arrays.asList("Fine");
        chat.send("How are you?", shown::append);
        assertEquals(m.promptFormat.render(Arrays.asList(new ChatMessage("user", "Hi"),
                new ChatMessage("assistant", "Hello"), new ChatMessage("user", "How are you?")), true),
                engine.prompts.get(1));
        assertEquals(2, engine.resets);
        assertEquals(1, chat.lastStats().generatedTokens);
        JSONObject noFmt = Fixtures.manifest();
        noFmt.getJSONObject("extra").getJSONObject("android").put("prompt_format", JSONObject.NULL)
                .put("prompt_format_error", "branches on content");
        BundleManifest bad = BundleManifest.parse(noFmt.toString(), null);
        assertNull(bad.promptFormat);
        BundleException e = assertThrows(BundleException.class, () -> new ChatSession(bad, engine,
                Settings.forChat(bad, new DeviceInfo("x", 8L << 30, 4))));
        assertTrue(e.getMessage().contains("branches on content"));
    }

    @Test
    void benchmarkRunsEveryPromptFromAFreshContext() throws Exception {
        BundleManifest m = Fixtures.parsed();
        Fixtures.FakeEngine engine = new Fixtures.FakeEngine();
        engine.pieces = Arrays.asList("a", "b", "c", "d");
        Settings s = Settings.forBenchmark(m, DeviceInfo.fromProfile(m.phoneProfiles.get("big-phone")));
        JSONObject out = Benchmark.run(m, engine, s, "big-phone", new HashMap<String, String>(), 12.5,
                () -> MemoryStats.parseProcStatus("VmRSS: 10 kB\nVmHWM: 20 kB\n"), null);
        assertEquals(Benchmark.SCHEMA, out.getString("schema"));
        assertEquals(2, out.getJSONArray("runs").length());
        assertEquals(Arrays.asList(4, 4), engine.seqLens);
        assertEquals(m.benchmarkPrompts.get(1).text, engine.prompts.get(1));
        JSONObject run = out.getJSONArray("runs").getJSONObject(0);
        assertEquals(4, run.getInt("generated_tokens"));
        assertEquals(3 * 1000.0 / 240.0, run.getDouble("decode_tokens_per_s"), 1e-9);
        assertEquals(20 * 1024, out.getJSONObject("memory").getLong("peak_rss_bytes"));
        assertEquals("abcd", run.getString("text"));
    }
}
