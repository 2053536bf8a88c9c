package org.edgecpm.demo.core;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.FileInputStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The `edgecpm.json` of a bundle written by `edgecpm package android` (its `extra.android` section).
 * Every field the app uses is required: a bundle from a different SDK version fails here with a clear
 * reason instead of misbehaving later. The schema string is the one exporters/executorch_android.py writes.
 */
public final class BundleManifest {
    public static final String SCHEMA = "edgecpm.android-bundle/1";
    public static final String FILE_NAME = "edgecpm.json";
    /** Where push.sh puts bundles on the phone (exporters/executorch_android.py DEVICE_DIR). */
    public static final String DEVICE_DIR = "/data/local/tmp/edgecpm";

    /** A phone profile's numbers shipped in the bundle (from device_profiles/*.toml). */
    public static final class PhoneProfile {
        public final String name;
        public final String displayName;
        public final long memoryBudgetBytes;
        public final int threads;

        PhoneProfile(String name, String displayName, long memoryBudgetBytes, int threads) {
            this.name = name;
            this.displayName = displayName;
            this.memoryBudgetBytes = memoryBudgetBytes;
            this.threads = threads;
        }
    }

    /** One benchmark prompt: the profiler's text cut at `context` tokens. */
    public static final class BenchmarkPrompt {
        public final int context;
        public final String text;

        BenchmarkPrompt(int context, String text) {
            this.context = context;
            this.text = text;
        }
    }

    public final File dir;
    public final String modelName;
    public final String quant;
    public final String modelFile;
    public final long modelBytes;
    public final String modelSha256;
    public final String tokenizerFile;
    public final long tokenizerBytes;
    public final String tokenizerSha256;
    public final String executorchVersion;
    public final int maxSeqLen;
    public final int maxContextLen;
    public final int bosId;
    public final List<Integer> eosIds;
    public final boolean addBos;
    public final Map<String, Integer> specialTokens;
    public final PromptFormat promptFormat; // null when the template cannot be reduced
    public final String promptFormatError;
    public final long kvBytesPerToken;
    public final String benchmarkSource;
    public final int benchmarkDecodeTokens;
    public final float benchmarkTemperature;
    public final List<BenchmarkPrompt> benchmarkPrompts;
    public final Map<String, PhoneProfile> phoneProfiles;

    private BundleManifest(File dir, JSONObject root) throws JSONException, BundleException {
        this.dir = dir;
        if (!"executorch".equals(root.getString("format"))) {
            throw new BundleException("bundle format is " + root.getString("format") + ", the app runs executorch");
        }
        quant = root.getString("quant");
        JSONObject a = root.getJSONObject("extra").getJSONObject("android");
        String schema = a.optString("schema", "(none)");
        if (!SCHEMA.equals(schema)) {
            throw new BundleException("bundle schema " + schema + " is not " + SCHEMA
                    + "; repackage it with this SDK's edgecpm package android");
        }
        JSONObject cfg = root.getJSONObject("config");
        modelName = cfg.optString("name", "");
        JSONObject files = a.getJSONObject("files");
        modelFile = files.getJSONObject("model").getString("name");
        modelBytes = files.getJSONObject("model").getLong("bytes");
        modelSha256 = files.getJSONObject("model").getString("sha256");
        tokenizerFile = files.getJSONObject("tokenizer").getString("name");
        tokenizerBytes = files.getJSONObject("tokenizer").getLong("bytes");
        tokenizerSha256 = files.getJSONObject("tokenizer").getString("sha256");
        executorchVersion = a.getString("executorch_version");
        maxSeqLen = a.getInt("max_seq_len");
        maxContextLen = a.getInt("max_context_len");
        bosId = a.getInt("bos_id");
        List<Integer> eos = new ArrayList<Integer>();
        JSONArray eosArr = a.getJSONArray("eos_ids");
        for (int i = 0; i < eosArr.length(); i++) {
            eos.add(eosArr.getInt(i));
        }
        eosIds = Collections.unmodifiableList(eos);
        addBos = a.getBoolean("add_bos");
        Map<String, Integer> special = new LinkedHashMap<String, Integer>();
        JSONObject sp = a.getJSONObject("special_tokens");
        for (Iterator<String> it = sp.keys(); it.hasNext(); ) {
            String k = it.next();
            special.put(k, sp.getInt(k));
        }
        specialTokens = Collections.unmodifiableMap(special);
        if (a.isNull("prompt_format")) {
            promptFormat = null;
            promptFormatError = a.getString("prompt_format_error");
        } else {
            promptFormat = new PromptFormat(a.getJSONObject("prompt_format"));
            promptFormatError = null;
        }
        kvBytesPerToken = a.getLong("kv_bytes_per_token");
        JSONObject bench = a.getJSONObject("benchmark");
        benchmarkSource = bench.getString("source");
        benchmarkDecodeTokens = bench.getInt("decode_tokens");
        benchmarkTemperature = (float) bench.getDouble("temperature");
        List<BenchmarkPrompt> prompts = new ArrayList<BenchmarkPrompt>();
        JSONArray arr = bench.getJSONArray("prompts");
        for (int i = 0; i < arr.length(); i++) {
            JSONObject p = arr.getJSONObject(i);
            prompts.add(new BenchmarkPrompt(p.getInt("context"), p.getString("text")));
        }
        benchmarkPrompts = Collections.unmodifiableList(prompts);
        Map<String, PhoneProfile> phones = new LinkedHashMap<String, PhoneProfile>();
        JSONObject dp = a.getJSONObject("device_profiles");
        for (Iterator<String> it = dp.keys(); it.hasNext(); ) {
            String k = it.next();
            JSONObject p = dp.getJSONObject(k);
            phones.put(k, new PhoneProfile(k, p.getString("display_name"), p.getLong("memory_budget_bytes"),
                    p.getInt("threads")));
        }
        phoneProfiles = Collections.unmodifiableMap(phones);
        if (maxSeqLen < 1 || maxContextLen < maxSeqLen) {
            throw new BundleException("bundle limits are inconsistent: max_seq_len " + maxSeqLen
                    + ", max_context_len " + maxContextLen);
        }
    }

    /** Parse manifest text; `dir` is where the bundle's files are (may be null when only parsing). */
    public static BundleManifest parse(String json, File dir) throws BundleException {
        try {
            return new BundleManifest(dir, new JSONObject(json));
        } catch (JSONException e) {
            throw new BundleException("bundle manifest is not what this app reads: " + e.getMessage());
        }
    }

    /** Read `dir/edgecpm.json`. */
    public static BundleManifest read(File dir) throws BundleException {
        File f = new File(dir, FILE_NAME);
        if (!f.isFile()) {
            throw new BundleException(dir + " has no " + FILE_NAME + " (push a bundle from edgecpm package android)");
        }
        try {
            return parse(new String(readAll(f), StandardCharsets.UTF_8), dir);
        } catch (IOException e) {
            throw new BundleException("cannot read " + f + ": " + e.getMessage());
        }
    }

    public File modelPath() {
        return new File(dir, modelFile);
    }

    public File tokenizerPath() {
        return new File(dir, tokenizerFile);
    }

    /** Text of a special token id ("" when the id is not special). */
    public String specialText(int id) {
        for (Map.Entry<String, Integer> e : specialTokens.entrySet()) {
            if (e.getValue() == id) {
                return e.getKey();
            }
        }
        return "";
    }

    /** Texts of the stop tokens: a runner that prints them is cut there. */
    public List<String> stopTexts() {
        List<String> out = new ArrayList<String>();
        for (int id : eosIds) {
            String t = specialText(id);
            if (!t.isEmpty()) {
                out.add(t);
            }
        }
        return out;
    }

    /** Size and checksum of both files: a truncated `adb push` is caught before the engine sees it. */
    public void verifyFiles(boolean checksums) throws BundleException {
        check(modelPath(), modelBytes, checksums ? modelSha256 : null);
        check(tokenizerPath(), tokenizerBytes, checksums ? tokenizerSha256 : null);
    }

    private static void check(File f, long bytes, String sha256) throws BundleException {
        if (!f.isFile()) {
            throw new BundleException(f + " is missing");
        }
        if (f.length() != bytes) {
            throw new BundleException(f + " has " + f.length() + " bytes, the manifest says " + bytes
                    + " (incomplete push?)");
        }
        if (sha256 != null && !sha256.equals(sha256Hex(f))) {
            throw new BundleException(f + " does not match its sha256 in the manifest");
        }
    }

    static String sha256Hex(File f) throws BundleException {
        try {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            InputStream in = new FileInputStream(f);
            try {
                byte[] buf = new byte[1 << 16];
                int n;
                while ((n = in.read(buf)) > 0) {
                    md.update(buf, 0, n);
                }
            } finally {
                in.close();
            }
            StringBuilder sb = new StringBuilder();
            for (byte b : md.digest()) {
                sb.append(String.format("%02x", b & 0xff));
            }
            return sb.toString();
        } catch (IOException | NoSuchAlgorithmException e) {
            throw new BundleException("cannot checksum " + f + ": " + e.getMessage());
        }
    }

    static byte[] readAll(File f) throws IOException {
        InputStream in = new FileInputStream(f);
        try {
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            int n;
            while ((n = in.read(buf)) > 0) {
                out.write(buf, 0, n);
            }
            return out.toByteArray();
        } finally {
            in.close();
        }
    }
}
