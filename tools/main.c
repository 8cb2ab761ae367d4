/* main.c: the `carve` command: one binary, one subcommand per phase. */
#include <stdlib.h>
#include <string.h>

#include "tools.h"

typedef struct Command {
  const char *name;
  int (*fn)(int, char **);
  const char *summary;
} Command;

static const Command commands[] = {
    {"check", cmd_check, "parse a model, check every shape, print its summary"},
    {"plan", cmd_plan, "choose stages, microbatches and every tensor's sharding for a cluster"},
    {"simulate", cmd_simulate, "replay a plan's step through the simulator (--trace for a timeline)"},
    {"compare", cmd_compare, "put plans side by side"},
    {"train", cmd_train, "check, compile and train a model on this machine in one go"},
    {"compile", cmd_compile, "compile a model into a program directory"},
    {"run", cmd_run, "run a compiled program"},
    {"explain", cmd_explain, "print a compiled program, instruction by instruction"},
    {"export", cmd_export, "write a checkpoint's parameters as a safetensors file"},
    {"data", cmd_data, "turn text files into a token file"},
    {"cluster", cmd_cluster, "check a cluster file and print the machine it describes"},
    {"profile", cmd_profile, "measure this machine's backend and write a cluster file"},
};

static void help(FILE *out) {
  fprintf(out,
          "carve %s: an auto-parallelizing compiler and runtime for training neural networks\n\n"
          "usage: carve <command> [options]\n\ncommands:\n",
          CARVE_VERSION);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "  %-9s %s\n  %-9s %s\n", "help", "this text; 'carve <command> --help' for a command's options",
          "version", "print the version");
  fprintf(out, "\nexamples:\n"
               "  carve check gpt --preset gpt2-124m\n"
               "  carve data /usr/share/common-licenses/* -o licenses.tok\n"
               "  carve train gpt --preset gpt-tiny --data licenses.tok --steps 300\n"
               "  carve compile gpt --preset gpt-tiny -o plan && carve run plan --steps 10\n");
}

int main(int argc, char **argv) {
  /* ranks started by mpirun share the cores: their threads must not spin
     while they wait; one process alone does best with libgomp's default
     (spin briefly, then sleep) */
  if (transport_launched()) carve_passive_threads(argv);
  if (argc < 2) {
    help(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    if (argc > 2)
      for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[2], commands[i].name)) {
          char *args[] = {argv[2], "--help", NULL};
          return commands[i].fn(2, args);
        }
    help(stdout);
    return 0;
  }
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("carve %s (program format %d)\n", CARVE_VERSION, CARVE_PROGRAM_FORMAT);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(cmd, commands[i].name)) {
      int rc = commands[i].fn(argc - 1, argv + 1);
      arena_reset();
      return rc;
    }
  fprintf(stderr, "carve: error: unknown command '%s'; 'carve help' lists the commands\n", cmd);
  return 2;
}
